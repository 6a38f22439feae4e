"""Commands into the running loop: any thread `submit`s one and gets a Future; the loop thread
drains the queue once per frame and runs each command there (the only thread that may embed:
the interpreter is not thread-safe, and the only one that sees the frames).

Results (`Future.result()`):
    StartEnroll(name, code=None, views=4, append=False) -> str (the session id)
    CaptureView(session_id)   -> CapturedViewInfo (NearDuplicateView when refused; ValueError
                                 when nothing steady is in view)
    FinishEnroll(session_id)  -> ProductInfo (the product stored, all views in one transaction)
    CancelEnroll(session_id)  -> None
    ReloadProducts()          -> int (the number of products now loaded)
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .errors import LoopNotRunningError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartEnroll:
    name: str
    code: str | None = None
    views: int = 4
    append: bool = False


@dataclass(frozen=True)
class CaptureView:
    session_id: str


@dataclass(frozen=True)
class FinishEnroll:
    session_id: str


@dataclass(frozen=True)
class CancelEnroll:
    session_id: str


@dataclass(frozen=True)
class ReloadProducts:
    pass


@dataclass(frozen=True)
class Call:
    """Run `fn()` on the loop thread (e.g. embedding photos while the loop owns the embedder)."""

    fn: Callable[[], Any]


Command = StartEnroll | CaptureView | FinishEnroll | CancelEnroll | ReloadProducts | Call


class CommandQueue:
    """Unbounded FIFO of (command, future). `submit` from any thread; `drain` on the loop thread
    only. `close` fails what is still queued (and everything submitted later) with LoopNotRunningError,
    so no caller waits forever on a loop that has stopped."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Any, Future[Any]]] = queue.SimpleQueue()
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._open = True

    def submit(self, command: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        if not self._open:
            fut.set_exception(
                LoopNotRunningError(
                    f"{type(command).__name__} needs the live loop (`python -m device run`), "
                    "which is not running"
                )
            )
            return fut
        self._q.put((command, fut))
        if not self._open:  # closed between the check and the put: do not leave it waiting
            self._fail_queued()
        return fut

    def drain(self, handle: Callable[[Any], Any], limit: int = 16) -> int:
        """Run up to `limit` queued commands with `handle` (the loop's dispatcher); how many ran.
        An exception from `handle` goes to that command's Future, never to the loop."""
        n = 0
        while n < limit:
            try:
                command, fut = self._q.get_nowait()
            except queue.Empty:
                break
            n += 1
            if not fut.set_running_or_notify_cancel():
                continue  # cancelled by the caller while queued
            try:
                fut.set_result(handle(command))
            except Exception as exc:  # the caller's problem (bad name, duplicate view, ...)
                fut.set_exception(exc)
        return n

    def close(self) -> None:
        self._open = False
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                command, fut = self._q.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(
                    LoopNotRunningError(f"the live loop stopped before {command!r} ran")
                )
