"""The on-device product database (SQLite, standard library `sqlite3`).

    products(id, name UNIQUE, code, created)
    views(id, product_id -> products, embedding float32 BLOB, dim, model_id, crop JPEG BLOB, created)
    events(id, ts, label, status, score, runner_up, runner_up_score, box, latency_ms, model_id,
           best, crop_box, frame, crop_file)   -- the event's JSON line, field for field
    meta(key, value)   -- 'products_rev': bumped by every change to products or views

WAL mode and a busy timeout let `enroll` write while `run` reads in another process; `run` notices
the change cheaply (`PRAGMA data_version`, then `products_rev`) and reloads its matcher. A product
is written with all its views in one transaction: whole or not at all. Every view keeps its crop,
so when the model changes every view is re-embedded from it (`reembed`) and no product is lost.
The schema version is `PRAGMA user_version`; `_MIGRATIONS[i]` takes version i to i + 1. Opening
checks the version and the tables, migrates, and probes that the file is writable in one write
transaction, so two processes opening a new file at once cannot both create the schema.
Every SQLite failure (disk full, read-only file, busy, damaged) surfaces as a `GalleryError` that
says what to do.

Moving a product set between devices (export/import files) is `device/transfer.py`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .closing import Closing
from .errors import GalleryError, ProductExists, ProductNotFound
from .events import Event, new_event_id

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 5
MAX_EVENTS = 100_000  # the events table is trimmed to the most recent rows
TABLES = ("products", "views", "events", "meta")  # the tables of the current schema

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


class EmbedderLike(Protocol):
    """What the device needs of a model: `device.embedder.Embedder` or a test double."""

    model_id: str

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray: ...

    def embed_many(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    code: str | None
    created: str
    n_views: int


@dataclass(frozen=True)
class View:
    id: int
    product_id: int
    model_id: str
    dim: int
    created: str


def product_name(text: str) -> str:
    """A product name as stored and looked up: trimmed, and in Unicode NFC, so "mjölk" typed on
    the device and "mjölk" from a folder copied off a Mac (decomposed) are one product."""
    return unicodedata.normalize("NFC", text).strip()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_jpeg(image_bgr: np.ndarray, max_side: int = 320, quality: int = 90) -> bytes:
    import cv2

    from .crop import shrink

    ok, buf = cv2.imencode(".jpg", shrink(image_bgr, max_side), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the crop as JPEG")
    return buf.tobytes()


def decode_crop_or_none(data: object) -> np.ndarray | None:
    """The BGR image of a stored crop; None when it is not a readable image."""
    import cv2

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        return None  # imdecode raises instead of returning None on an empty buffer
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def decode_jpeg(data: bytes) -> np.ndarray:
    image = decode_crop_or_none(data)
    if image is None:
        raise GalleryError("a stored crop is not a readable JPEG: the database is damaged")
    return image


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it COMMITs first, which would break the migration's transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE products(
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            code TEXT,
            created TEXT NOT NULL);
        CREATE TABLE views(
            id INTEGER PRIMARY KEY,
            product_id INTEGER NOT NULL REFERENCES products(id) ON DELETE CASCADE,
            embedding BLOB NOT NULL,
            dim INTEGER NOT NULL,
            model_id TEXT NOT NULL,
            crop BLOB NOT NULL,
            created TEXT NOT NULL);
        CREATE INDEX views_product ON views(product_id);
        CREATE TABLE events(
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            label TEXT,
            status TEXT NOT NULL,
            score REAL,
            runner_up TEXT,
            runner_up_score REAL,
            box TEXT,
            latency_ms REAL,
            model_id TEXT);
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta(key, value) VALUES ('products_rev', '0');
        """,
    )


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    # The rest of the event's JSON line, so `gallery events` gives back what `run` printed.
    _run_script(
        conn,
        """
        ALTER TABLE events ADD COLUMN best TEXT;
        ALTER TABLE events ADD COLUMN crop_box TEXT;
        ALTER TABLE events ADD COLUMN frame INTEGER;
        """,
    )


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    # The saved crop's file (run --save-crops), and `best` of the events logged before schema 2
    # (a known event's best product is its label).
    _run_script(
        conn,
        """
        ALTER TABLE events ADD COLUMN crop_file TEXT;
        UPDATE events SET best = label WHERE best IS NULL AND status = 'known';
        """,
    )


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    # Product names as `product_name` makes them (trimmed, Unicode NFC), so that names stored
    # before (e.g. decomposed, from a folder copied off a Mac) are found by the same spelling.
    taken = {r[0] for r in conn.execute("SELECT name FROM products")}
    for pid, name in conn.execute("SELECT id, name FROM products ORDER BY id").fetchall():
        new = product_name(name)
        if new == name:
            continue
        base, n = new, 2
        while new in taken:  # two spellings of one name: keep both, told apart
            new, n = f"{base} ({n})", n + 1
        logger.warning("product name %r stored as %r", name, new)
        conn.execute("UPDATE products SET name = ? WHERE id = ?", (new, pid))
        taken.discard(name)
        taken.add(new)


def _v4_to_v5(conn: sqlite3.Connection) -> None:
    # The event's stable id (device/events.py: Event.id); rows logged before get one now.
    _run_script(
        conn,
        """
        ALTER TABLE events ADD COLUMN uid TEXT;
        UPDATE events SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL
        """,
    )


# _MIGRATIONS[i] migrates a database at user_version i to i + 1 (inside one transaction).
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v0_to_v1,
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
    _v4_to_v5,
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


class Gallery(Closing):
    """The product database; a context manager with an idempotent `close()`."""

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 10.0, check: bool = True
    ) -> None:
        self._undecodable: set[int] = set()  # views re-embedding could not decode
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._rev: int | None = None
        self._events_since_trim = 0
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

    def _migrate(self) -> None:
        """Check that this is a product database, migrate it, and prove it writable: one
        BEGIN IMMEDIATE transaction, so a process opening a new file at the same time waits here
        and then finds the schema made instead of creating it a second time."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            self._check_tables(version)
            # A real write: a read-only file opens (read-only) without error, and os.access says
            # nothing for root, so without this the first event would fail instead.
            conn.execute(f"PRAGMA user_version = {version}")
            migrated = version < SCHEMA_VERSION
            while version < SCHEMA_VERSION:
                logger.info(
                    "migrating the product database %s to schema %d", self.path, version + 1
                )
                _MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT" if migrated else "ROLLBACK")
        except BaseException:
            self._rollback(conn)
            raise

    def _check_tables(self, version: int) -> None:
        """Refuse another application's SQLite file (it is not changed); a new one is created."""
        names = sorted(
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            )
        )
        if version == 0 and not names:
            return  # a new (or empty) file
        # Our migrations set the tables and user_version together: version 0 with tables, or a
        # version without any of our tables, is some other program's database.
        if version == 0 or not set(names) & set(TABLES):
            raise GalleryError(
                f"{self.path} is an SQLite database but not a product database (tables: "
                f"{', '.join(names) or 'none'}): give another --db path (or [gallery] path); "
                "it was not changed"
            )
        if version > SCHEMA_VERSION:
            raise GalleryError(
                f"{self.path} has schema version {version}, newer than this software "
                f"({SCHEMA_VERSION}): update prodrec on this device"
            )
        # Every schema since 1 has all four tables: a file lacking one is damaged (or another
        # program's) and is not migrated.
        missing = [t for t in TABLES if t not in names]
        if missing:
            raise GalleryError(self._corrupt(f"the tables {', '.join(missing)} are missing"))

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

    # --- products ------------------------------------------------------------------------------

    def products(self) -> list[Product]:
        with self._failures("listing the products"):
            rows = self.conn.execute(
                "SELECT p.id, p.name, p.code, p.created, COUNT(v.id) FROM products p "
                "LEFT JOIN views v ON v.product_id = p.id GROUP BY p.id ORDER BY p.name"
            ).fetchall()
        return [Product(*row) for row in rows]

    def product(self, name: str) -> Product | None:
        with self._failures("looking up a product"):
            row = self.conn.execute(
                "SELECT p.id, p.name, p.code, p.created, COUNT(v.id) FROM products p "
                "LEFT JOIN views v ON v.product_id = p.id WHERE p.name = ? GROUP BY p.id",
                (product_name(name),),
            ).fetchone()
        return Product(*row) if row else None

    def product_by_id(self, product_id: int) -> Product | None:
        with self._failures("looking up a product"):
            row = self.conn.execute(
                "SELECT p.id, p.name, p.code, p.created, COUNT(v.id) FROM products p "
                "LEFT JOIN views v ON v.product_id = p.id WHERE p.id = ? GROUP BY p.id",
                (int(product_id),),
            ).fetchone()
        return Product(*row) if row else None

    def views(self, product_id: int) -> list[View]:
        """The views of a product, oldest first (without their crops: see `view_crop`)."""
        with self._failures("listing the views"):
            rows = self.conn.execute(
                "SELECT id, product_id, model_id, dim, created FROM views WHERE product_id = ? "
                "ORDER BY id",
                (int(product_id),),
            ).fetchall()
        return [View(*row) for row in rows]

    def view_crop(self, view_id: int) -> bytes:
        """The stored JPEG crop of a view; ProductNotFound when there is no such view."""
        with self._failures("reading a stored crop"):
            row = self.conn.execute(
                "SELECT crop FROM views WHERE id = ?", (int(view_id),)
            ).fetchone()
        if row is None:
            raise ProductNotFound(f"no view with id {view_id}")
        return bytes(row[0])

    def set_code(self, name: str, code: str | None) -> None:
        """Set (or clear, with None or "") the product's code."""
        name = product_name(name)
        with self.transaction(f"setting the code of {name!r}") as c:
            n = c.execute(
                "UPDATE products SET code = ? WHERE name = ?", (code or None, name)
            ).rowcount
            if n == 0:
                raise ProductNotFound(
                    f"no product named {name!r} (see `python -m device products list`)"
                )
            self._bump(c)

    def delete_view(self, view_id: int) -> None:
        """Delete one view (a product keeps its other views; it may be left with none)."""
        with self.transaction(f"deleting the view {view_id}") as c:
            if c.execute("DELETE FROM views WHERE id = ?", (int(view_id),)).rowcount == 0:
                raise ProductNotFound(f"no view with id {view_id}")
            self._bump(c)

    def __len__(self) -> int:
        with self._failures("counting the products"):
            return int(self.conn.execute("SELECT COUNT(*) FROM products").fetchone()[0])

    def _bump(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'products_rev'"
        )

    def add_product(
        self,
        name: str,
        views: Sequence[tuple[np.ndarray, np.ndarray]],
        model_id: str,
        *,
        code: str | None = None,
        append: bool = False,
        crop_size: int = 320,
    ) -> int:
        """Store a product with its (embedding, crop BGR) views in one transaction; its id.

        `append` adds the views to an existing product of that name instead of refusing it."""
        name = product_name(name)
        if not name:
            raise ValueError("a product needs a name")
        if not views:
            raise ValueError(f"product {name!r}: no views to store")
        rows = [
            (embedding_blob(emb), int(np.asarray(emb).size), encode_jpeg(crop, crop_size))
            for emb, crop in views
        ]
        return self._insert(name, code, rows, model_id, append=append)

    def _insert(
        self,
        name: str,
        code: str | None,
        rows: Sequence[tuple[bytes, int, bytes]],
        model_id: str,
        *,
        append: bool = False,
        created: str | None = None,
        conn: sqlite3.Connection | None = None,
    ) -> int:
        def write(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT id FROM products WHERE name = ?", (name,)).fetchone()
            if row is not None and not append:
                raise ProductExists(
                    f"a product named {name!r} already exists: choose another name, add views "
                    "with --append, or `products rename`/`products delete` it first"
                )
            now = utc_now()
            if row is None:
                pid = c.execute(
                    "INSERT INTO products(name, code, created) VALUES (?, ?, ?)",
                    (name, code, created or now),
                ).lastrowid
            else:
                pid = row[0]
                if code:
                    c.execute("UPDATE products SET code = ? WHERE id = ?", (code, pid))
            c.executemany(
                "INSERT INTO views(product_id, embedding, dim, model_id, crop, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(pid, emb, dim, model_id, crop, now) for emb, dim, crop in rows],
            )
            self._bump(c)
            return int(pid)

        if conn is not None:
            return write(conn)
        with self.transaction(f"storing the product {name!r}") as c:
            return write(c)

    def rename(self, old: str, new: str) -> str:
        """Rename a product; the new name as stored."""
        old, new = product_name(old), product_name(new)
        if not new:
            raise ValueError("the new name is empty")
        with self.transaction(f"renaming the product {old!r}") as c:
            if c.execute("SELECT 1 FROM products WHERE name = ?", (new,)).fetchone():
                raise ProductExists(f"a product named {new!r} already exists")
            if c.execute("UPDATE products SET name = ? WHERE name = ?", (new, old)).rowcount == 0:
                raise ProductNotFound(
                    f"no product named {old!r} (see `python -m device products list`)"
                )
            self._bump(c)
        return new

    def delete(self, name: str) -> None:
        name = product_name(name)
        with self.transaction(f"deleting the product {name!r}") as c:
            if c.execute("DELETE FROM products WHERE name = ?", (name,)).rowcount == 0:
                raise ProductNotFound(
                    f"no product named {name!r} (see `python -m device products list`)"
                )
            self._bump(c)

    # --- embeddings ----------------------------------------------------------------------------

    def load(self, model_id: str) -> tuple[np.ndarray, list[str]]:
        """(embeddings (N, D), product name of each view) of the views made by `model_id`.

        A product without views of that model (e.g. none left) is simply not among them."""
        with self._failures("loading the products"):
            rows = self.conn.execute(
                "SELECT p.name, v.embedding, v.dim FROM views v JOIN products p "
                "ON p.id = v.product_id WHERE v.model_id = ? ORDER BY p.id, v.id",
                (model_id,),
            ).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32), []
        dims = {r[2] for r in rows}
        if len(dims) != 1:
            raise GalleryError(
                f"views of model {model_id[:12]} have different sizes {sorted(dims)}"
            )
        emb = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        return emb.astype(np.float32), [r[0] for r in rows]

    def stale_views(self, model_id: str) -> int:
        """How many views were embedded by another model than `model_id`."""
        with self._failures("counting the views of older models"):
            return int(
                self.conn.execute(
                    "SELECT COUNT(*) FROM views WHERE model_id != ?", (model_id,)
                ).fetchone()[0]
            )

    def reembed(
        self,
        embedder: EmbedderLike,
        *,
        batch: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Re-embed every view not made by `embedder`'s model from its stored crop; the count.

        Each batch is embedded, then written in its own short transaction: another process can
        still enroll meanwhile, and work done before an interruption (a stop, a start timeout)
        is kept, so the next call carries on. A view changed in between is left for the next
        call. `progress(done, total)` is called after each batch (the service uses it to keep
        systemd's start timeout and watchdog satisfied). A view whose crop cannot be decoded is
        kept for its old model (a WARNING names it), and a product left without views of the new
        model is named in a WARNING too."""
        model_id = embedder.model_id
        with self._failures("re-embedding the views for the new model"):
            rows = self.conn.execute(
                "SELECT v.id, v.model_id, p.id, p.name FROM views v JOIN products p "
                "ON p.id = v.product_id WHERE v.model_id != ? ORDER BY v.id",
                (model_id,),
            ).fetchall()
        # Views whose crop failed to decode in this process are not tried (and warned) again on
        # every reload; a new process tries them once more.
        todo = [r for r in rows if r[0] not in self._undecodable]
        if not todo:
            return 0
        logger.info(
            "the model changed (now %s): re-embedding %d stored views from their crops",
            model_id[:12],
            len(todo),
        )
        done_views = 0
        unreadable: list[tuple[int, str, int, str]] = []  # view id, its model, product id, name
        last_log = time.monotonic()
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            keep: list[tuple[np.ndarray, int, str]] = []  # image, view id, its model
            for view_id, old_model, pid, name in chunk:
                with self._failures("reading the stored crops"):
                    row = self.conn.execute(
                        "SELECT crop FROM views WHERE id = ?", (view_id,)
                    ).fetchone()
                if row is None:
                    continue  # deleted meanwhile
                image = decode_crop_or_none(row[0])
                if image is None:
                    # Kept, not deleted: it still matches under its own model (a rollback with
                    # deploy-model.sh), and a failure to decode may be passing (memory).
                    logger.warning(
                        "product %r: the stored crop of view %d cannot be decoded, so the view "
                        "cannot be re-embedded for the new model; it is kept for its old model",
                        name,
                        view_id,
                    )
                    unreadable.append((view_id, old_model, pid, name))
                    self._undecodable.add(view_id)
                    continue
                keep.append((image, view_id, old_model))
            if keep:
                embs = np.asarray(embedder.embed_many([c for c, _, _ in keep]), dtype=np.float32)
                updates = [
                    (embedding_blob(emb), int(emb.size), model_id, view_id, old_model)
                    for emb, (_, view_id, old_model) in zip(embs, keep, strict=True)
                ]
                with self.transaction("re-embedding the views for the new model") as c:
                    c.executemany(
                        "UPDATE views SET embedding = ?, dim = ?, model_id = ? "
                        "WHERE id = ? AND model_id = ?",
                        updates,
                    )
                    self._bump(c)
                done_views += len(updates)
            done = min(start + batch, len(todo))
            if progress is not None:
                progress(done, len(todo))
            if time.monotonic() - last_log > 2.0 or done == len(todo):
                logger.info("re-embedded %d/%d views", done, len(todo))
                last_log = time.monotonic()
        with self._failures("checking the re-embedded products"):
            emptied = sorted(
                {
                    name
                    for _, _, pid, name in unreadable
                    if self.conn.execute(
                        "SELECT 1 FROM views WHERE product_id = ? AND model_id = ?",
                        (pid, model_id),
                    ).fetchone()
                    is None
                }
            )
        for name in emptied:
            logger.warning(
                "product %r has no views for this model and cannot be recognised: enroll it "
                "again with --append (`python -m device enroll %s --append`) or delete it",
                name,
                json.dumps(name),
            )
        return done_views

    # --- change detection ----------------------------------------------------------------------

    def revision(self) -> int:
        with self._failures("reading its revision"):
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'products_rev'").fetchone()
        return int(row[0]) if row else 0

    def changed(self) -> bool:
        """True when products or views changed since the last call (in any process).

        `PRAGMA data_version` changes only when another connection committed: a few microseconds,
        so it can be polled from the frame loop; the revision counter then ignores event rows."""
        with self._failures("checking it for changes"):
            dv = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if dv == self._data_version:
            return False
        self._data_version = dv
        rev = self.revision()
        if rev == self._rev:
            return False
        self._rev = rev
        return True

    # --- events --------------------------------------------------------------------------------

    def log_event(self, event: Event | Mapping[str, Any]) -> None:
        """Store one event (an `Event`, or the dict of its JSON line) as a row."""
        if isinstance(event, Event):
            event = event.to_dict()
        box, crop_box = event.get("box"), event.get("crop_box")
        with self._failures("logging a recognition event"):
            self.conn.execute(
                "INSERT INTO events(ts, label, status, score, runner_up, runner_up_score, box, "
                "latency_ms, model_id, best, crop_box, frame, crop_file, uid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.get("time") or utc_now(),
                    event.get("label"),
                    event.get("status", ""),
                    event.get("score"),
                    event.get("runner_up"),
                    event.get("runner_up_score"),
                    json.dumps(list(box)) if box is not None else None,
                    event.get("latency_ms"),
                    event.get("model_id"),
                    event.get("best"),
                    json.dumps(list(crop_box)) if crop_box is not None else None,
                    event.get("frame"),
                    event.get("crop_file"),
                    event.get("id") or new_event_id(),
                ),
            )
            self._events_since_trim += 1
            if self._events_since_trim >= 1000:
                self._events_since_trim = 0
                self.conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                    (MAX_EVENTS,),
                )

    def events(
        self,
        limit: int = 100,
        *,
        offset: int = 0,
        label: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """The last `limit` events (skipping the `offset` newest), oldest first, with the keys of
        the JSON lines `run` prints (and "id"); only those of `label` / `status` when given."""
        where, params = [], []
        if label is not None:
            where.append("label = ?")
            params.append(product_name(label))
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = (
            "SELECT uid AS id, ts AS time, label, status, score, best, runner_up, "
            "runner_up_score, box, crop_box, latency_ms, frame, model_id, crop_file FROM events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY events.id DESC LIMIT ? OFFSET ?"
        )
        with self._failures("reading the events"):
            cur = self.conn.execute(sql, (*params, int(limit), int(offset)))
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            for key in ("box", "crop_box"):
                item[key] = json.loads(item[key]) if item[key] else None
            if item["crop_file"] is None:  # as `run` prints it: the key only when a crop was saved
                del item["crop_file"]
            out.append(item)
        return out[::-1]


def embedding_blob(emb: np.ndarray) -> bytes:
    v = np.asarray(emb, dtype="<f4").reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("an embedding holds NaN or infinite values")
    return v.tobytes()
