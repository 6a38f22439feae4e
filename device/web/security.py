"""Sessions, CSRF tokens and login rate limiting for the web server (plain Python).

Owned by the web server's thread (its asyncio loop): every method runs there, so no lock is
needed. Sessions live in memory only: restarting the service logs everyone out, which is fine for
a device page and means no session secret is ever written to disk.

- A login creates a session: a random token (the `prodrec_session` cookie, HttpOnly, SameSite=Strict;
  or `Authorization: Bearer <token>` for API clients such as curl) and its own CSRF token.
- Every change (POST, PUT, PATCH, DELETE) made with the cookie must carry the session's CSRF token
  in the `X-CSRF-Token` header: another site can make a browser send the cookie, but cannot read
  the token (and SameSite=Strict already keeps the cookie off cross-site requests). Bearer requests
  need no CSRF token: browsers never add that header by themselves.
- Without a password (only allowed on a loopback address) there are no sessions, but changes
  still need the server's CSRF token, so a web page in the local browser cannot drive the API.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "prodrec_session"
CSRF_HEADER = "x-csrf-token"
# Sessions kept at most (the oldest are dropped): a flood of logins cannot grow memory.
MAX_SESSIONS = 256


@dataclass
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._by_token: dict[str, Session] = {}

    def create(self) -> Session:
        self._expire()
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.pop(next(iter(self._by_token)))
        s = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(24), self._clock() + self.lifetime_s
        )
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        if s.expires <= self._clock():
            del self._by_token[token]
            return None
        return s

    def count(self) -> int:
        self._expire()
        return len(self._by_token)

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, s in self._by_token.items() if s.expires <= now]:
            del self._by_token[token]


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and secrets.compare_digest(expected.encode(), (given or "").encode())


class LoginLimiter:
    """At most `attempts` failed logins per client address in a sliding `window_s`."""

    def __init__(
        self,
        attempts: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 4096,
    ) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may try now."""
        q = self._failures.get(client)
        if not q:
            return 0.0
        now = self._clock()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) < self.attempts:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self._max_clients:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(self._clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
