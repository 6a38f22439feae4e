"""One output's delivery worker: its pending outbox rows, oldest first, with back-off.

The row at the head is retried until it is delivered, refused for good (RejectedError) or older than
[outbox] max_age_s (expired, counted and logged): events reach a receiver in the order they
happened. A failure is logged once when it starts and once when delivery works again; the
attempts in between are DEBUG lines (a broker away for a night must not fill the journal).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import outbox
from ..closing import Closing
from ..config import OutboxConfig
from .base import DeliveryError, Output, RejectedError

logger = logging.getLogger(__name__)

BATCH = 32  # rows read per query
IDLE_S = 5.0  # with nothing to deliver, look again this often (a wake-up comes sooner)
PRUNE_EVERY_S = 600.0


class DeliveryWorker(Closing):
    """Delivers one output's outbox rows on its own thread.

    Threads: the worker thread owns its database connection and is the only caller of
    `output.send`; it alone writes the counters, which `stats()` reads from any thread."""

    def __init__(
        self,
        output: Output,
        db_path: str | Path,
        config: OutboxConfig,
        *,
        clock: Callable[[], float] = time.time,
        idle_s: float = IDLE_S,
    ) -> None:
        self.output = output
        self.db_path = Path(db_path)
        self.config = config
        self.clock = clock
        self.idle_s = idle_s
        self.delivered = 0
        self.failed = 0  # failed attempts (each retried)
        self.rejected = 0
        self.expired = 0
        self.backlog = 0  # pending rows, as of the worker's last look
        self.last_error: str | None = None
        self.failing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Set when the receiver is back (the output says so) or on stop: ends a back-off early,
        # so a broker that returns after a long outage is not left waiting for retry_max_s.
        self._retry_now = threading.Event()
        output.on_ready = self.retry_now
        self._thread = threading.Thread(target=self._run, name=f"outbox {output.name}", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def wake(self) -> None:
        """New rows were committed: look now instead of after `idle_s`."""
        self._wake.set()

    def stop(self) -> None:
        """Ask the thread to stop after the delivery under way (see `close`)."""
        self._stop.set()
        self._wake.set()
        self._retry_now.set()

    def retry_now(self) -> None:
        """The receiver is reachable again: end the back-off (any thread)."""
        self._retry_now.set()

    def _back_off(self, seconds: float) -> bool:
        """Wait `seconds` unless the receiver comes back (or a stop); True when it came back."""
        back = self._retry_now.wait(seconds)
        self._retry_now.clear()
        return back and not self._stop.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread. A delivery under way is given up to `timeout` seconds; its row
        stays pending (delivered again after a restart: the event id tells receivers)."""
        self.stop()
        if self._started and self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "state": "failing" if self.failing else "ok",
            "backlog": self.backlog,
            "delivered": self.delivered,
            "failed": self.failed,
            "rejected": self.rejected,
            "expired": self.expired,
            "last_error": self.last_error,
        }

    # --- the worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        name = self.output.name
        backoff = self.config.retry_initial_s
        db_failing = False
        next_prune = 0.0
        try:
            conn = outbox.connect(self.db_path)
        except sqlite3.Error as exc:
            logger.error("%s: cannot open the outbox in %s: %s", name, self.db_path, exc)
            return
        try:
            while not self._stop.is_set():
                self._wake.clear()  # before reading: a commit after the read wakes us again
                try:
                    if self.clock() >= next_prune:
                        next_prune = self.clock() + PRUNE_EVERY_S
                        outbox.prune_finished(conn, name, now=self.clock())
                    rows = outbox.pending(conn, name, BATCH)
                    self.backlog = outbox.backlog(conn, name)
                    if db_failing:
                        logger.warning("%s: the outbox is readable again", name)
                        db_failing = False
                except sqlite3.Error as exc:
                    if not db_failing:
                        logger.error("%s: cannot read the outbox: %s; retrying", name, exc)
                        db_failing = True
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.config.retry_max_s)
                    continue
                if not rows:
                    self._wake.wait(self.idle_s)
                    continue
                for row in rows:
                    if self._stop.is_set():
                        break
                    try:
                        done = self._deliver(conn, row)
                    except sqlite3.Error as exc:  # delivered (or not) but not marked: next time
                        logger.error("%s: cannot update the outbox: %s", name, exc)
                        done = False
                    if not done:
                        if self._back_off(backoff):
                            backoff = self.config.retry_initial_s
                        else:
                            backoff = min(backoff * 2, self.config.retry_max_s)
                        break
                    backoff = self.config.retry_initial_s
        finally:
            conn.close()

    def _deliver(self, conn: sqlite3.Connection, row: outbox.OutboxRow) -> bool:
        """Try the row once; False when it is to be retried after a back-off."""
        name = self.output.name
        age = self.clock() - row.created
        if age > self.config.max_age_s:
            outbox.finish(conn, row.seq, outbox.EXPIRED, now=self.clock())
            self.expired += 1
            self.backlog = max(0, self.backlog - 1)
            logger.warning(
                "%s: gave up event %s after %.0f s undelivered (%d attempts; last error: %s); "
                "%d given up so far",
                name,
                row.event_id,
                age,
                row.attempts,
                self.last_error,
                self.expired,
            )
            return True
        try:
            event = json.loads(row.payload)
        except ValueError as exc:  # a damaged row is not retried for a day
            outbox.finish(conn, row.seq, outbox.REJECTED, f"unreadable: {exc}", now=self.clock())
            self.rejected += 1
            logger.error("%s: outbox row of event %s is unreadable: %s", name, row.event_id, exc)
            return True
        try:
            what = self.output.send(event, row.crop)
        except RejectedError as exc:
            outbox.finish(conn, row.seq, outbox.REJECTED, str(exc), now=self.clock())
            self.rejected += 1
            self.backlog = max(0, self.backlog - 1)
            logger.error("%s refused event %s (not retried): %s", name, row.event_id, exc)
            return True
        except DeliveryError as exc:
            if not self._stop.is_set():  # cut short by a stop: not a failure of the receiver
                self._failed(conn, row, str(exc))
            return False
        except Exception as exc:  # an adapter's bug must not end delivery: logged, retried
            logger.exception("%s: unexpected error delivering event %s", name, row.event_id)
            self._failed(conn, row, f"{type(exc).__name__}: {exc}")
            return False
        outbox.finish(conn, row.seq, outbox.DELIVERED, now=self.clock())
        self.delivered += 1
        self.backlog = max(0, self.backlog - 1)
        if self.failing:
            self.failing = False
            logger.warning("%s: delivering again (%s)", name, what)
        logger.debug("%s: event %s: %s", name, row.event_id, what)
        return True

    def _failed(self, conn: sqlite3.Connection, row: outbox.OutboxRow, error: str) -> None:
        self.failed += 1
        self.last_error = error
        outbox.attempt_failed(conn, row.seq, error)
        if not self.failing:
            self.failing = True
            logger.warning(
                "%s: cannot deliver (%s); the events are kept and retried with back-off",
                self.output.name,
                error,
            )
        else:
            logger.debug("%s: still failing: %s", self.output.name, error)
