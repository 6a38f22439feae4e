"""The service's status line with the outputs in it: "last: Oat milk (0.91); mqtt: connected;
webhook till: failing (HTTP 503), 4 queued" (`systemctl status prodrec`).

A wrapper of the loop's notifier (device/sdnotify.py's protocol): each status the loop sets gets
the outputs' words appended, and since an output can start failing while nothing else happens,
the watchdog ping (once per frame) also re-sends the line when the outputs' part changed, at most
every `every_s` seconds. Reading the outputs' state costs no I/O (counters in memory).

Threads: the loop thread only (like the notifier it wraps).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class StatusWithOutputs:
    def __init__(
        self,
        inner: Any,
        status_text: Callable[[], str],
        *,
        every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.status_text = status_text
        self.every_s = every_s
        self.clock = clock
        self._text = ""  # the loop's own part of the line
        self._sent: str | None = None
        self._next = 0.0

    def _line(self) -> str:
        outputs = self.status_text()
        return "; ".join(t for t in (self._text, outputs) if t)

    def _send(self) -> bool:
        line = self._line()
        self._sent = line
        self._next = self.clock() + self.every_s
        return bool(self.inner.status(line))

    def ready(self, status: str | None = None) -> bool:
        if status is not None:
            self._text = status
        return bool(self.inner.ready(self._line()))

    def status(self, text: str) -> bool:
        self._text = text
        return self._send()

    def watchdog(self, *, force: bool = False) -> bool:
        ok = bool(self.inner.watchdog(force=force))
        if self.clock() >= self._next:
            self._next = self.clock() + self.every_s
            if self._line() != self._sent:
                self._send()
        return ok

    def stopping(self, status: str | None = None) -> bool:
        return bool(self.inner.stopping(status))

    def extend_timeout(self, seconds: float) -> bool:
        return bool(self.inner.extend_timeout(seconds))
