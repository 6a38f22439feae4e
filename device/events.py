"""Recognition events and how they travel: the loop publishes an `Event`, sinks deliver it.

    loop thread --publish()--> [bus queue] --dispatcher thread--> stages (CropSink: saves the crop,
        sets crop_file) --> one queue + worker thread per sink (stdout line, event row, MQTT, ...)
                        --> in-process subscribers (bounded queues, oldest dropped: a web feed)

`publish` never blocks: a full queue drops the event (counted in `stats()`, logged). A sink that
raises is counted and logged and gets the next event; a sink that blocks only backs up its own
queue. Adding an output is `bus.add(sink)`: no loop code changes.

Threads: `publish` is called by the loop thread; each sink's `deliver` runs on that sink's own
worker thread (so a sink needs no locking of its own state); stages run on the dispatcher thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np

from .closing import Closing

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
STATUSES = ("known", "unknown", "ambiguous")
# The JSON line's keys in the order `run` has always printed them ("id" first, "crop_file" last
# and only when a crop was saved).
_KEYS = (
    "time",
    "label",
    "status",
    "score",
    "best",
    "runner_up",
    "runner_up_score",
    "box",
    "crop_box",
    "latency_ms",
    "frame",
    "model_id",
)
# The columns of an event as a table row (the web page's CSV download): the id, then the JSON
# line's fields in order.
CSV_FIELDS = ("id", *_KEYS)


def new_event_id() -> str:
    return uuid.uuid4().hex


def _box(value: Any, key: str) -> Box:
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event field {key!r} is not a box of 4 whole numbers: {value!r}") from exc
    if len(items) != 4:
        raise ValueError(f"event field {key!r} is not a box of 4 whole numbers: {value!r}")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class Event:
    """One recognition: the fields of the JSON line `run` prints, plus a stable id."""

    id: str  # uuid4 hex, made when the loop creates the event
    time: str  # ISO 8601 UTC with ms and "Z"
    label: str  # product name, or "unknown"
    status: str  # "known" | "unknown" | "ambiguous"
    score: float
    best: str | None
    runner_up: str | None
    runner_up_score: float | None
    box: Box
    crop_box: Box
    latency_ms: float
    frame: int
    model_id: str
    crop_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's fields (JSON-safe: boxes as lists); "crop_file" only when saved."""
        d = asdict(self)
        out: dict[str, Any] = {"id": self.id}
        for key in _KEYS:
            out[key] = list(d[key]) if key in ("box", "crop_box") else d[key]
        if self.crop_file is not None:
            out["crop_file"] = self.crop_file
        return out

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """The event of a JSON line or an event row (ValueError naming a missing/bad field)."""
        missing = [k for k in ("time", "status") if d.get(k) is None]
        if missing:
            raise ValueError(f"an event needs {', '.join(missing)}")
        rs = d.get("runner_up_score")
        return cls(
            id=str(d.get("id") or new_event_id()),
            time=str(d["time"]),
            label=str(d.get("label") or "unknown"),
            status=str(d["status"]),
            score=float(d.get("score") if d.get("score") is not None else -1.0),
            best=d.get("best"),
            runner_up=d.get("runner_up"),
            runner_up_score=None if rs is None else float(rs),
            box=_box(d.get("box") or (0, 0, 0, 0), "box"),
            crop_box=_box(d.get("crop_box") or (0, 0, 0, 0), "crop_box"),
            latency_ms=float(d.get("latency_ms") or 0.0),
            frame=int(d.get("frame") or 0),
            model_id=str(d.get("model_id") or ""),
            crop_file=d.get("crop_file"),
        )

    def with_crop_file(self, path: str | None) -> Event:
        return replace(self, crop_file=path)


class EventSink(Protocol):
    """An output of events. `deliver` runs on the sink's own worker thread (never the loop's)."""

    name: str

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None: ...

    def close(self) -> None: ...


class EventStage(Protocol):
    """A step every event passes before the sinks see it (the dispatcher thread runs it): e.g.
    `CropSink` saves the crop and returns the event with `crop_file` set, so the stdout line,
    the event row and the subscribers all carry the file."""

    name: str

    def prepare(self, event: Event, crop_bgr: np.ndarray | None) -> Event: ...

    def close(self) -> None: ...


@dataclass
class _Counts:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    failing: bool = False  # the last delivery raised (logged once until it works again)


class _Pending:
    """How many items are queued or being handled; `wait_idle` for `EventBus.drain`."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    def add(self) -> None:
        with self._cond:
            self._n += 1

    def done(self) -> None:
        with self._cond:
            self._n -= 1
            if self._n <= 0:
                self._cond.notify_all()

    @property
    def n(self) -> int:
        return self._n

    def wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._n > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


_STOP = object()


def _report_failure(name: str, counts: _Counts) -> None:
    counts.failed += 1
    if not counts.failing:
        counts.failing = True
        logger.exception("event output %s failed (recognition goes on)", name)
    else:
        logger.debug("event output %s still failing", name, exc_info=True)


def _report_success(name: str, counts: _Counts) -> None:
    counts.delivered += 1
    if counts.failing:
        counts.failing = False
        logger.warning("event output %s works again", name)


class _Worker:
    """One sink, its bounded queue and its thread (which alone calls the sink's `deliver`)."""

    def __init__(self, sink: EventSink, queue_size: int, pending: _Pending) -> None:
        self.sink = sink
        self.name = str(getattr(sink, "name", type(sink).__name__))
        self.counts = _Counts()
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._pending = pending
        self.thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self.thread.start()

    def offer(self, item: tuple[Event, np.ndarray | None]) -> None:
        self._pending.add()
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self._pending.done()
            self.counts.dropped += 1
            if self.counts.dropped == 1 or self.counts.dropped % 100 == 0:
                logger.warning(
                    "event output %s is behind: %d event(s) dropped so far",
                    self.name,
                    self.counts.dropped,
                )

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                self.sink.deliver(*item)
            except Exception:  # an output's failure must never reach the loop
                _report_failure(self.name, self.counts)
            else:
                _report_success(self.name, self.counts)
            finally:
                self._pending.done()


class EventBus(Closing):
    """Fans events out to sinks without ever blocking the publisher (see the module docstring).

    A context manager; `close()` (idempotent) delivers what is queued (waiting up to
    `close_timeout_s`), then closes the sinks. A sink still blocked then is left behind (its
    thread is a daemon) and named in a warning."""

    def __init__(
        self,
        sinks: Iterable[EventSink] = (),
        queue_size: int = 256,
        *,
        stages: Iterable[EventStage] = (),
        close_timeout_s: float = 5.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be 1 or more")
        self.queue_size = queue_size
        self.close_timeout_s = close_timeout_s
        self._pending = _Pending()
        self._lock = threading.Lock()  # guards the lists below (add/subscribe from any thread)
        self._workers: list[_Worker] = []
        self._stages: list[tuple[EventStage, _Counts]] = [(s, _Counts()) for s in stages]
        self._subscribers: list[queue.Queue[Event]] = []
        self._dropped = 0  # events refused because the bus queue was full
        self._closed = False
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._dispatcher = threading.Thread(target=self._dispatch, name="event-bus", daemon=True)
        self._dispatcher.start()
        for sink in sinks:
            self.add(sink)

    def add(self, sink: EventSink, queue_size: int | None = None) -> None:
        """Deliver every event from now on to `sink` (its own queue of `queue_size`, default the
        bus's, and its own thread)."""
        size = queue_size or self.queue_size
        with self._lock:
            if self._closed:
                raise RuntimeError("the event bus is closed")
            self._workers.append(_Worker(sink, size, self._pending))

    def remove(self, sink: EventSink) -> None:
        """Stop delivering to `sink` (what it has queued is still delivered; it is not closed)."""
        with self._lock:
            workers = [w for w in self._workers if w.sink is sink]
            self._workers = [w for w in self._workers if w.sink is not sink]
        for w in workers:
            _put_stop(w.queue)
            w.thread.join(self.close_timeout_s)

    def publish(self, event: Event, crop_bgr: np.ndarray | None = None) -> None:
        """Queue `event` for the stages, sinks and subscribers; never blocks (a full queue drops
        it, counted and logged). The crop is not copied: the publisher must not change it."""
        if self._closed:
            logger.warning("event %s published after the bus closed: dropped", event.id)
            return
        self._pending.add()
        try:
            self._inbox.put_nowait((event, crop_bgr))
        except queue.Full:
            self._pending.done()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 100 == 0:
                logger.warning("the event outputs are behind: %d event(s) dropped", self._dropped)

    def subscribe(self, maxsize: int = 100) -> queue.Queue[Event]:
        """A queue that receives every event from now on (after the stages, so crop_file is set).
        When it is full the oldest event is dropped: a slow reader never holds the bus."""
        q: queue.Queue[Event] = queue.Queue(maxsize=maxsize)
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[Event]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(q)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per stage and sink: delivered, failed, dropped, backlog; "bus" for the shared queue."""
        out: dict[str, dict[str, int]] = {
            "bus": {
                "delivered": 0,
                "failed": 0,
                "dropped": self._dropped,
                "backlog": self._inbox.qsize(),
            }
        }
        with self._lock:
            entries = [(s.name, c, 0) for s, c in self._stages]
            entries += [(w.name, w.counts, w.queue.qsize()) for w in self._workers]
        for name, c, backlog in entries:
            out[name] = {
                "delivered": c.delivered,
                "failed": c.failed,
                "dropped": c.dropped,
                "backlog": backlog,
            }
        return out

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every published event has been handled by every sink; False on timeout.
        (For tests and for stopping: the loop never calls this while running.)"""
        return self._pending.wait_idle(time.monotonic() + timeout)

    def _dispatch(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            event, crop = item
            try:
                for stage, counts in self._stages:
                    try:
                        event = stage.prepare(event, crop)
                    except Exception:  # e.g. the crop folder vanished: the event goes on
                        _report_failure(stage.name, counts)
                    else:
                        _report_success(stage.name, counts)
                with self._lock:
                    workers, subscribers = list(self._workers), list(self._subscribers)
                for w in workers:
                    w.offer((event, crop))
                for q in subscribers:
                    _offer_dropping_oldest(q, event)
            finally:
                self._pending.done()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + self.close_timeout_s
        if not self._pending.wait_idle(deadline):
            stuck = [w.name for w in self._workers if w.queue.qsize() or w.thread.is_alive()]
            logger.warning(
                "event outputs still busy after %.1f s at stop (%s): undelivered events dropped",
                self.close_timeout_s,
                ", ".join(stuck) or "the bus",
            )
        _put_stop(self._inbox)
        self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            _put_stop(w.queue)
        for w in self._workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                logger.warning("event output %s is blocked: left running, not closed", w.name)
                continue
            _close_quietly(w.name, w.sink)
        for stage, _ in self._stages:
            _close_quietly(stage.name, stage)


def _put_stop(q: queue.Queue[Any]) -> None:
    # A full queue (a blocked sink) cannot take the stop marker: that thread is a daemon anyway.
    with contextlib.suppress(queue.Full):
        q.put_nowait(_STOP)


def _close_quietly(name: str, handle: Any) -> None:
    try:
        handle.close()
    except Exception:  # closing one output must not keep the others open
        logger.exception("closing the event output %s failed", name)


def _offer_dropping_oldest(q: queue.Queue[Event], event: Event) -> None:
    while True:
        try:
            q.put_nowait(event)
            return
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
