"""The outbox: a durable queue, in the product database, of the events each output still owes.

    outbox(seq, output, event_id, payload, crop, created, status, attempts, last_error, done)

One row per (event, output that must not lose events: MQTT, webhooks). Rows are written by the
event log's append in the SAME transaction as the event row (`enqueue` runs inside the caller's
transaction): an event is either in the events table and owed to every output, or nowhere, even
across a power cut. Each output's delivery worker (device/outputs/worker.py) reads its own pending
rows in `seq` order on its own connection and marks each one delivered, rejected (the receiver
refused it for good, e.g. HTTP 4xx) or expired (still undelivered after [outbox] max_age_s).
Finished rows lose their crop at once and are deleted after KEEP_FINISHED_S.

`UNIQUE(output, event_id)`: an event written twice (a retried append) is owed once. The event's
stable id travels in the payload, so a receiver can drop the duplicate a crash between delivery
and marking may cause (delivery is at least once).

The table has its own version (meta 'outbox_version'), independent of the product schema's
`user_version`, so the outbox can be added to a database of any product schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

OUTBOX_VERSION = 1
KEEP_FINISHED_S = 3600.0  # finished rows stay this long (seen by `outputs` status), then go
PENDING, DELIVERED, REJECTED, EXPIRED = "pending", "delivered", "rejected", "expired"
STATUSES = (PENDING, DELIVERED, REJECTED, EXPIRED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    output TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    crop BLOB,
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done REAL,
    UNIQUE(output, event_id));
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(output, status, seq)
"""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    output: str
    event_id: str
    payload: str  # the event's JSON
    crop: bytes | None  # the event's crop as JPEG, for outputs that send it
    created: float  # unix time the event was written
    attempts: int


@dataclass(frozen=True)
class Owed:
    """An output the outbox holds events for: its name, and whether it wants the crop."""

    name: str
    wants_crop: bool = False


class OutboxHook(Protocol):
    """What the event log needs of the outputs (device/outputs: `Outputs`): the crop as the
    outbox keeps it, the rows owed for an event (inside the event row's transaction), and a
    wake-up once they are committed."""

    def crop_jpeg(self, crop_bgr: np.ndarray) -> bytes | None: ...

    def enqueue(
        self, conn: sqlite3.Connection, event: dict[str, Any], crop_jpeg: bytes | None = None
    ) -> int: ...

    def notify(self) -> None: ...


def connect(path: str | Path, busy_timeout_s: float = 10.0) -> sqlite3.Connection:
    """A connection of one delivery worker (its thread owns it): autocommit, like the Gallery's."""
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    # As the Gallery's: in WAL mode a commit is durable at the next checkpoint, not fsync'ed
    # one by one (a mark lost to a power cut only means one event delivered again).
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create (or migrate) the outbox table; its own transaction unless one is open."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'outbox_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > OUTBOX_VERSION:
            raise sqlite3.DatabaseError(
                f"outbox version {version} is newer than this software ({OUTBOX_VERSION})"
            )
        if version < 1:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('outbox_version', ?)",
            (str(OUTBOX_VERSION),),
        )
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def enqueue(
    conn: sqlite3.Connection,
    owed: Iterable[Owed],
    event_id: str,
    payload: str,
    crop_jpeg: bytes | None = None,
    *,
    now: float | None = None,
) -> int:
    """Owe the event to each output; runs inside the caller's transaction (the event row's).
    The number of rows written (an event already owed to an output is not owed twice)."""
    created = time.time() if now is None else now
    rows = [(o.name, event_id, payload, crop_jpeg if o.wants_crop else None, created) for o in owed]
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO outbox(output, event_id, payload, crop, created) "
        "VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return conn.total_changes - before


def pending(conn: sqlite3.Connection, output: str, limit: int = 32) -> list[OutboxRow]:
    """The oldest `limit` rows `output` still owes, in the order they were written."""
    rows = conn.execute(
        "SELECT seq, output, event_id, payload, crop, created, attempts FROM outbox "
        "WHERE output = ? AND status = 'pending' ORDER BY seq LIMIT ?",
        (output, limit),
    ).fetchall()
    return [OutboxRow(*r) for r in rows]


def finish(
    conn: sqlite3.Connection,
    seq: int,
    status: str,
    error: str | None = None,
    *,
    now: float | None = None,
) -> None:
    """Mark a row delivered, rejected or expired (and drop its crop: nothing reads it again)."""
    if status not in (DELIVERED, REJECTED, EXPIRED):
        raise ValueError(f"not a final outbox status: {status!r}")
    conn.execute(
        "UPDATE outbox SET status = ?, last_error = COALESCE(?, last_error), done = ?, "
        "crop = NULL, attempts = attempts + ? WHERE seq = ?",
        (status, error, time.time() if now is None else now, int(status != EXPIRED), seq),
    )


def attempt_failed(conn: sqlite3.Connection, seq: int, error: str) -> None:
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error, seq)
    )


def counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Rows per output and status (finished rows: those of the last KEEP_FINISHED_S)."""
    out: dict[str, dict[str, int]] = {}
    for output, status, n in conn.execute(
        "SELECT output, status, COUNT(*) FROM outbox GROUP BY output, status"
    ):
        out.setdefault(output, dict.fromkeys(STATUSES, 0))[status] = int(n)
    return out


def backlog(conn: sqlite3.Connection, output: str) -> int:
    row = conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE output = ? AND status = 'pending'", (output,)
    ).fetchone()
    return int(row[0])


def prune_finished(
    conn: sqlite3.Connection, output: str | None = None, *, now: float | None = None
) -> int:
    """Delete the finished rows (of `output`, or all) older than KEEP_FINISHED_S; how many."""
    t = (time.time() if now is None else now) - KEEP_FINISHED_S
    if output is None:
        cur = conn.execute("DELETE FROM outbox WHERE status != 'pending' AND done < ?", (t,))
    else:
        cur = conn.execute(
            "DELETE FROM outbox WHERE output = ? AND status != 'pending' AND done < ?", (output, t)
        )
    return int(cur.rowcount)


def drop_orphans(
    conn: sqlite3.Connection,
    configured: Sequence[str],
    max_age_s: float,
    *,
    now: float | None = None,
) -> dict[str, int]:
    """Delete the pending rows older than `max_age_s` of outputs no longer configured (no worker
    will ever deliver or expire them); {output: rows dropped}. Younger ones are kept: the output
    may be back after a config fix and a restart."""
    t = (time.time() if now is None else now) - max_age_s
    marks = ",".join("?" * len(configured))
    where = f"status = 'pending' AND created < ? AND output NOT IN ({marks})"
    args = (t, *configured)
    dropped = {
        str(o): int(n)
        for o, n in conn.execute(
            f"SELECT output, COUNT(*) FROM outbox WHERE {where} GROUP BY output", args
        )
    }
    if dropped:
        conn.execute(f"DELETE FROM outbox WHERE {where}", args)
    return dropped
