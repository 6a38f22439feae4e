"""What every request handler shares: the device app, the web settings, sessions and the live
feeds; and the access check (authentication, CSRF, Host) applied to every guarded route.

Owned by the web server's thread: handlers run on its asyncio loop, and blocking device calls are
sent to its worker threads (Starlette's `run_in_threadpool`), never to the frame loop's thread
except through `DeviceApp.submit`.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Config
from .crops import CropFiles
from .live import FrameEncoder, LiveFeed
from .password import is_local_host
from .security import CSRF_HEADER, SESSION_COOKIE, LoginLimiter, Session, Sessions, csrf_ok

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(header: str) -> str:
    """The name part of a Host header ("127.0.0.1:8080" -> "127.0.0.1", "[::1]:8080" -> "::1")."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Denied(Exception):  # noqa: N818 - an outcome: the answer to give
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebContext:
    def __init__(
        self,
        app: Any,
        config: Config,
        password_hash: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.config = config
        self.web = config.web
        self.password_hash = password_hash
        self.sessions = Sessions(config.web.session_hours * 3600.0, clock)
        self.limiter = LoginLimiter(config.web.login_attempts, 60.0, clock)
        # Without a password: the one CSRF token of this process (see device/web/security.py).
        self.local_csrf = secrets.token_urlsafe(24)
        self.encoder = FrameEncoder(
            app.hub, max_width=config.web.live_width, quality=config.web.jpeg_quality
        )
        self.feed = LiveFeed()
        self.crop_files = CropFiles(config.service.save_crops)
        self.stopping = threading.Event()  # set when the server shuts down: streams end
        self.started = time.monotonic()
        # Camera enrollments started through this server: session id -> last request's time,
        # and the task cancelling those left idle (device/web/routes.py: Api._reap).
        self.enrolls: dict[str, float] = {}
        self.reaper: asyncio.Task[None] | None = None

    @property
    def auth_required(self) -> bool:
        return self.password_hash is not None

    def session_of(self, headers: Any, cookies: dict[str, str]) -> tuple[Session | None, bool]:
        """(session, by_bearer) of a request."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self.sessions.get(auth[7:].strip()), True
        return self.sessions.get(cookies.get(SESSION_COOKIE)), False

    def check(self, method: str, headers: Any, cookies: dict[str, str]) -> Session | None:
        """The request's session (None when no password is set); raises Denied (401, 403)."""
        if not self.auth_required:
            # Only reachable on a loopback address. A Host other than a local name is a page of
            # another site that made its name resolve to 127.0.0.1 (DNS rebinding): refuse it.
            host = host_name(headers.get("host", ""))
            if not is_local_host(host):
                raise Denied(403, "this page answers only to http://127.0.0.1 or http://localhost")
            if method not in SAFE_METHODS and not csrf_ok(
                self.local_csrf, headers.get(CSRF_HEADER)
            ):
                raise Denied(403, "missing or wrong X-CSRF-Token header (see GET /api/session)")
            return None
        session, by_bearer = self.session_of(headers, cookies)
        if session is None:
            raise Denied(401, "log in first (POST /api/login)")
        # Bearer requests need no CSRF token: a browser never adds that header by itself.
        if (
            method not in SAFE_METHODS
            and not by_bearer
            and not csrf_ok(session.csrf, headers.get(CSRF_HEADER))
        ):
            raise Denied(403, "missing or wrong X-CSRF-Token header (see GET /api/session)")
        return session
