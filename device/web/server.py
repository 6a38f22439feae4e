"""The web server's thread: uvicorn serving the Starlette app on its own asyncio loop.

`WebServer` is started by `python -m device run` beside the frame loop. The listening socket is
bound in the caller's thread, so a busy port or a bad address is reported at start; the server
then runs in a daemon thread until `close()` (idempotent), which asks uvicorn to stop, ends the
open event streams and waits for the thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from ..closing import Closing
from ..config import Config
from .context import WebContext

logger = logging.getLogger(__name__)


class WebServerError(RuntimeError):
    """The web server could not start (address in use, bad host)."""


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebServerError(f"[web] host {host!r} is not a usable address: {exc}") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise WebServerError(
            f"cannot serve the web page on {host}:{port}: {exc.strerror or exc} (another "
            "program uses the port? change [web] port, or set [web] enabled = false)"
        ) from exc
    sock.setblocking(False)
    return sock


class WebServer(Closing):
    """Serves `app` (a DeviceApp) over HTTP; `port` is the bound port (useful with port 0)."""

    def __init__(
        self,
        app: Any,
        config: Config,
        password_hash: str | None,
        *,
        port: int | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        import uvicorn

        from .routes import build_app

        self.ctx = WebContext(app, config, password_hash)
        self._sock = bind_socket(config.web.host, config.web.port if port is None else port)
        self.port = int(self._sock.getsockname()[1])
        self.host = config.web.host
        app.bus.add(self.ctx.feed)  # recognitions with their crops, for the live page
        uv_config = uvicorn.Config(
            build_app(self.ctx),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            # Behind a reverse proxy on this machine: trust its X-Forwarded-* (scheme, client).
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._failed: BaseException | None = None
        self._closed = False
        self._thread.start()
        deadline = start_timeout_s
        step = 0.02
        while not self._server.started and self._thread.is_alive() and deadline > 0:
            threading.Event().wait(step)
            deadline -= step
        if not self._server.started:
            self.close()
            raise WebServerError(f"the web server did not start: {self._failed or 'timeout'}")
        logger.info("web page on http://%s:%d/", _url_host(self.host), self.port)

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported by the starting thread or logged
            self._failed = exc
            logger.exception("the web server stopped")

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ctx.stopping.set()
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            logger.warning("the web server did not stop within 10 s (left behind: daemon thread)")
        self._sock.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
