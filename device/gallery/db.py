"""The product database's connection, transactions and SQLite error translation."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..closing import Closing
from ..errors import GalleryError

logger = logging.getLogger(__name__)

# SQLite result codes that need their own advice (the primary code is the low byte).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_SQLITE_READONLY_DIRECTORY = _SQLITE_READONLY | (6 << 8)
# Python < 3.11 has no `sqlite_errorcode`: the code is then recognised from SQLite's message.
_MESSAGE_CODES = (
    ("disk is full", _SQLITE_FULL),
    ("readonly", _SQLITE_READONLY),
    ("locked", _SQLITE_BUSY),
    ("malformed", _SQLITE_CORRUPT),
    ("not a database", _SQLITE_NOTADB),
    ("disk i/o error", _SQLITE_IOERR),
    ("unable to open", _SQLITE_CANTOPEN),
)


def _error_code(exc: sqlite3.Error) -> int:
    """The SQLite (extended) result code of `exc`; 0 when unknown."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    text = str(exc).lower()
    return next((c for needle, c in _MESSAGE_CODES if needle in text), 0)


class Database(Closing):
    """The SQLite connection (WAL, busy timeout), its transactions, and every SQLite failure
    turned into a GalleryError that says what to do. A context manager, idempotent `close()`.
    Subclasses make and migrate the schema in `_migrate` (device/gallery/schema.py)."""

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 10.0, check: bool = True
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GalleryError(
                f"cannot create the folder {parent} for the product database: {exc}; create it "
                "and make it writable by the user running prodrec, or set [gallery] path"
            ) from exc
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise GalleryError(self._cannot_open(exc)) from exc
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise GalleryError(self._corrupt(f"integrity check failed: {result}"))
            self._migrate()
            # After the checks: another application's database is refused, never converted.
            self._use_wal()
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._error(exc, "opening it", default=self._corrupt(exc)) from exc
            raise

    def _cannot_open(self, exc: object) -> str:
        return (
            f"cannot open the product database {self.path} for writing ({exc}): check that its "
            "folder exists and is writable by the user running prodrec (the service uses "
            "/var/lib/prodrec), or set [gallery] path / --db"
        )

    def _not_writable(self, exc: object) -> str:
        return (
            f"the product database file {self.path} is not writable ({exc}): check its "
            f"permissions and owner (and those of {self.path.name}-wal and -shm beside it, if "
            "present); they must be writable by the user running prodrec (the service runs as "
            f"the user prodrec: `sudo chown prodrec:prodrec {self.path}*`), or set [gallery] "
            "path / --db"
        )

    def _corrupt(self, exc: object) -> str:
        return (
            f"{self.path} is not a usable product database ({exc}): it is corrupt or not a "
            "prodrec database. Move it aside (the app then starts an empty one) and restore "
            "the products with `python -m device gallery import BACKUP.zip` or enroll them again"
        )

    def _error(self, exc: sqlite3.Error, doing: str, *, default: str | None = None) -> GalleryError:
        """A GalleryError that says what to do about the SQLite failure `exc` while `doing`."""
        code = _error_code(exc)
        primary = code & 0xFF
        where = f"the product database {self.path}"
        if primary == _SQLITE_FULL:
            msg = (
                f"the disk holding {where} is full ({exc}) while {doing}: nothing was changed; "
                f"free some space on it (see `df -h {self.path.parent}`) and try again"
            )
        elif code == _SQLITE_READONLY_DIRECTORY or primary == _SQLITE_CANTOPEN:
            msg = self._cannot_open(exc)
        elif primary in (_SQLITE_READONLY, _SQLITE_PERM):
            msg = self._not_writable(exc)
        elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            msg = (
                f"{where} stayed locked by another process for over {self.busy_timeout_s:g} s "
                f"while {doing} ({exc}): try again when the other prodrec command has finished"
            )
        elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            msg = self._corrupt(exc)
        elif primary == _SQLITE_IOERR:
            msg = (
                f"the disk reported an error on {where} while {doing} ({exc}): check the storage "
                "(SD card or USB disk) and its free space, then try again"
            )
        else:
            msg = default or f"{where} failed while {doing} ({exc})"
        return GalleryError(msg)

    @contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """Raise any SQLite failure inside as a GalleryError (what failed, and what to do)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, doing) from exc

    # --- lifetime ------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GalleryError(f"the product database {self.path} is closed")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the database (a WAL read transaction), whatever other
        processes write meanwhile."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield
        finally:
            self._rollback(conn)

    @contextmanager
    def transaction(self, doing: str = "writing to it") -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception (including KeyboardInterrupt).

        An SQLite failure (also at COMMIT, e.g. a full disk) is raised as a GalleryError after the
        rollback; other exceptions (ValueError, ...) pass through unchanged."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc, doing) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._error(exc, doing) from exc
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        # After some failures (full disk, I/O error) SQLite has already rolled back by itself.
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:  # keep the original error; this one is secondary
            logger.error("could not roll back the product database %s: %s", self.path, exc)

    def _use_wal(self) -> None:
        """Switch to WAL mode (it persists in the file). Changing the journal mode can meet
        SQLITE_BUSY without SQLite's busy handler (another first open holding its write lock),
        so it is retried here until the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                busy = (_error_code(exc) & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            logger.warning("the product database is not in WAL mode (%s)", mode)

    def _migrate(self) -> None:
        """Create or migrate the schema (inside __init__, before WAL mode is switched on)."""
