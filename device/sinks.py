"""The device's own event outputs (see device/events.py): the JSON line on stdout, the row in the
events table, and the saved crop (a stage: it runs before the sinks, so they all carry its file).

Each object is used by one thread only (its worker or the bus's dispatcher), so it holds no locks.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from .errors import GalleryError
from .events import Event
from .outbox import OutboxHook

logger = logging.getLogger(__name__)

# Event rows kept in memory while the database refuses them.
MAX_PENDING_EVENTS = 1000
# While the database refuses event rows, they are tried again with the next event once this long
# has passed, doubling up to the maximum: a locked database costs its busy timeout per try, and
# a sink stuck in tries falls behind and drops events.
EVENTS_RETRY_INITIAL_S = 1.0
EVENTS_RETRY_MAX_S = 60.0
# The app's own saved crops: <UTC time>_<frame>_<label>.jpg (pruning never touches other files).
CROP_NAME = re.compile(r"^\d{8}T\d{6}(\.\d+)?Z?_\d{7}_.*\.jpg$")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "unknown"


class StdoutSink:
    """One JSON line per event on `out` (stdout: the journal under systemd)."""

    name = "stdout"

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self._devnull: TextIO | None = None

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        try:
            self.out.write(event.to_json() + "\n")
            self.out.flush()
        except BrokenPipeError:  # e.g. `... | head`: keep recognising, into the database only
            logger.warning("stdout is closed: events now go to the events table only")
            self._devnull = self.out = open(os.devnull, "w")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self._devnull is not None:
            self._devnull.close()
            self._devnull = None


class EventLogLike(Protocol):
    def log_event(self, event: Event | dict[str, Any]) -> None: ...

    def transaction(self, doing: str = ...) -> AbstractContextManager[sqlite3.Connection]: ...

    def close(self) -> None: ...


class EventLogSink:
    """A row per event in the product database's events table.

    A database that cannot take the rows (disk full, file made read-only, locked) must not stop
    recognition: the events are on stdout anyway, and the rows are written once it works again
    (the most recent MAX_PENDING_EVENTS kept), tried with a later event after a back-off
    (EVENTS_RETRY_INITIAL_S doubling to EVENTS_RETRY_MAX_S) and once more at close. `database` is
    a path (this sink then opens its own connection, used only on its worker thread) or an open
    event log (not closed here)."""

    name = "event-log"

    def __init__(
        self,
        database: str | Path | EventLogLike,
        outbox: OutboxHook | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(database) if isinstance(database, (str, Path)) else None
        self._log: EventLogLike | None = None if self._path is not None else database  # type: ignore[assignment]
        self.pending: list[Event] = []  # reported but not yet in the database (oldest first)
        self._failing = False
        # The outputs that must not lose an event (device/outbox.py): each row's event is owed
        # to them in the row's own transaction. Set before the first event (DeviceApp.run).
        self.outbox = outbox
        self._crops: dict[str, bytes] = {}  # event id -> crop JPEG for the outbox, while pending
        self._clock = clock
        self._retry_s = EVENTS_RETRY_INITIAL_S  # the wait after the next refusal
        self._retry_at = 0.0  # clock() time before which a refused database is not tried again

    def _open(self) -> EventLogLike:
        if self._log is None:
            from .gallery import Gallery

            assert self._path is not None
            # The loop has opened (checked, migrated) this database already.
            gallery = Gallery(self._path, check=False)
            # Each event row (and what the outputs owe of it) survives a power cut: synced at
            # its commit, not at the next WAL checkpoint. One fsync per event, on this thread.
            gallery.conn.execute("PRAGMA synchronous = FULL")
            self._log = gallery
        return self._log

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        outbox = self.outbox
        if outbox is not None and crop_bgr is not None:
            jpeg = outbox.crop_jpeg(crop_bgr)
            if jpeg is not None:
                self._crops[event.id] = jpeg
        self.pending.append(event)
        if self._clock() >= self._retry_at:
            self.flush_or_warn()
        else:  # backing off: kept for a later try
            self._drop_oldest()

    def flush(self) -> None:
        """Write the pending rows (GalleryError when the database refuses them)."""
        log = self._open()
        outbox = self.outbox
        try:
            while self.pending:
                event = self.pending[0]
                if outbox is None:
                    log.log_event(event)
                else:
                    with log.transaction("logging a recognition event") as conn:
                        log.log_event(event)
                        outbox.enqueue(conn, event.to_dict(), self._crops.get(event.id))
                self.pending.pop(0)
                self._crops.pop(event.id, None)
        finally:
            if outbox is not None:
                outbox.notify()

    def flush_or_warn(self) -> bool:
        """`flush`, logging (once) instead of raising; True when nothing is pending."""
        try:
            self.flush()
        except GalleryError as exc:
            self._retry_at = self._clock() + self._retry_s
            self._retry_s = min(self._retry_s * 2, EVENTS_RETRY_MAX_S)
            if not self._failing:
                logger.error(
                    "cannot write events to the product database: %s. Recognition goes on; the "
                    "events are still printed and are written when the database works again",
                    exc,
                )
                self._failing = True
            self._drop_oldest()
            return False
        self._retry_s, self._retry_at = EVENTS_RETRY_INITIAL_S, 0.0
        if self._failing:
            logger.warning("events are written to the product database again")
            self._failing = False
        return True

    def _drop_oldest(self) -> None:
        dropped = len(self.pending) - MAX_PENDING_EVENTS
        if dropped > 0:
            logger.error(
                "%d event row(s) dropped (only the last %d are kept while the database "
                "refuses them; every event is in the printed JSON lines)",
                dropped,
                MAX_PENDING_EVENTS,
            )
            for old in self.pending[:dropped]:
                self._crops.pop(old.id, None)
            del self.pending[:dropped]

    def close(self) -> None:
        # One last try, whatever the back-off: the rows are lost otherwise.
        if self.pending and not self.flush_or_warn():
            logger.error(
                "%d event row(s) not written to the database (they are in the printed JSON lines)",
                len(self.pending),
            )
        if self._path is not None and self._log is not None:
            self._log.close()
            self._log = None


class CropSink:
    """Saves each event's crop as <UTC time>_<frame>_<label>.jpg in `folder` and keeps the newest
    `keep` of the app's crops there (0 = all; other files are never touched).

    A stage (`prepare` returns the event with `crop_file` set, or unchanged when the crop could
    not be written), so the printed line and the event row name the file."""

    name = "crops"

    def __init__(self, folder: str | Path, keep: int = 0) -> None:
        self.folder = Path(folder)
        self.keep = keep
        self.folder.mkdir(parents=True, exist_ok=True)
        # Listed once here, then kept up to date as crops are saved: no folder listing per event.
        # Not kept at all with keep = 0 (keep all): nothing is pruned, and a list of every crop
        # of a months-long run would only grow.
        self._saved: deque[Path] = deque(
            sorted(p for p in self.folder.glob("*.jpg") if CROP_NAME.match(p.name)) if keep else ()
        )

    def path_for(self, event: Event) -> Path:
        stamp = event.time.replace(":", "").replace("-", "")
        return self.folder / f"{stamp}_{event.frame:07d}_{safe_name(event.label)}.jpg"

    def prepare(self, event: Event, crop_bgr: np.ndarray | None) -> Event:
        if crop_bgr is None:
            return event
        import cv2

        path = self.path_for(event)
        if not cv2.imwrite(str(path), crop_bgr):
            logger.warning("could not save the crop to %s", path)
            return event
        if self.keep:
            self._saved.append(path)
            self._prune()
        return event.with_crop_file(str(path))

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        """As a plain sink (no crop_file for the others): saves the crop."""
        self.prepare(event, crop_bgr)

    def _prune(self) -> None:
        # Names start with the event's UTC time, so name order is age order.
        while self.keep and len(self._saved) > self.keep:
            old = self._saved.popleft()
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:  # a crop folder problem must not stop recognition
                logger.warning("could not delete the saved crop %s: %s", old, exc)

    def close(self) -> None:
        pass
