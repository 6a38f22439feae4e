"""The on-device product database (SQLite, standard library `sqlite3`).

    products(id, name UNIQUE, code, created)
    views(id, product_id -> products, embedding float32 BLOB, dim, model_id, crop JPEG BLOB, created)
    events(id, ts, label, status, score, runner_up, runner_up_score, box, latency_ms, model_id)
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

`export_gallery` / `import_gallery` move a product set between devices as one zip file
(gallery.json + embeddings.npy + the JPEG crops); `read_gallery_export` checks such a file
completely without touching any database.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .closing import Closing
from .errors import GalleryError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EXPORT_FORMAT = "prodrec-gallery"
EXPORT_VERSION = 1
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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_jpeg(image_bgr: np.ndarray, max_side: int = 320, quality: int = 90) -> bytes:
    import cv2

    from .crop import shrink

    ok, buf = cv2.imencode(".jpg", shrink(image_bgr, max_side), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the crop as JPEG")
    return buf.tobytes()


def _decode_crop(data: object) -> np.ndarray | None:
    """The BGR image of a stored crop; None when it is not a readable image."""
    import cv2

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        return None  # imdecode raises instead of returning None on an empty buffer
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def decode_jpeg(data: bytes) -> np.ndarray:
    image = _decode_crop(data)
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


# _MIGRATIONS[i] migrates a database at user_version i to i + 1 (inside one transaction).
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1]
assert len(_MIGRATIONS) == SCHEMA_VERSION


class Gallery(Closing):
    """The product database; a context manager with an idempotent `close()`."""

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 10.0, check: bool = True
    ) -> None:
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
        missing = [t for t in TABLES if t not in names] if version == SCHEMA_VERSION else []
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
        return next((p for p in self.products() if p.name == name), None)

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
        name = name.strip()
        if not name:
            raise ValueError("a product needs a name")
        if not views:
            raise ValueError(f"product {name!r}: no views to store")
        rows = [
            (_embedding_blob(emb), int(np.asarray(emb).size), encode_jpeg(crop, crop_size))
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
                raise ValueError(
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

    def rename(self, old: str, new: str) -> None:
        new = new.strip()
        if not new:
            raise ValueError("the new name is empty")
        with self.transaction(f"renaming the product {old!r}") as c:
            if c.execute("SELECT 1 FROM products WHERE name = ?", (new,)).fetchone():
                raise ValueError(f"a product named {new!r} already exists")
            if c.execute("UPDATE products SET name = ? WHERE name = ?", (new, old)).rowcount == 0:
                raise ValueError(f"no product named {old!r} (see `python -m device products list`)")
            self._bump(c)

    def delete(self, name: str) -> None:
        with self.transaction(f"deleting the product {name!r}") as c:
            if c.execute("DELETE FROM products WHERE name = ?", (name,)).rowcount == 0:
                raise ValueError(
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

        The embeddings are computed first, then written in one short transaction (so another
        process can still enroll meanwhile); a view changed in between is left for the next call.
        A view whose crop is unreadable is deleted (a WARNING names it): its embedding belongs to
        the old model, so it could never match again, and one bad crop must not stop the app. A
        product left without views is kept, with a WARNING that it must be enrolled again."""
        model_id = embedder.model_id
        with self._failures("re-embedding the views for the new model"):
            todo = self.conn.execute(
                "SELECT v.id, v.model_id, p.id, p.name FROM views v JOIN products p "
                "ON p.id = v.product_id WHERE v.model_id != ? ORDER BY v.id",
                (model_id,),
            ).fetchall()
        if not todo:
            return 0
        logger.info(
            "the model changed (now %s): re-embedding %d stored views from their crops",
            model_id[:12],
            len(todo),
        )
        updates: list[tuple[bytes, int, str, int, str]] = []
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
                image = _decode_crop(row[0])
                if image is None:
                    logger.warning(
                        "product %r: the stored crop of view %d is not a readable JPEG, so the "
                        "view cannot be re-embedded for the new model; deleting that view",
                        name,
                        view_id,
                    )
                    unreadable.append((view_id, old_model, pid, name))
                    continue
                keep.append((image, view_id, old_model))
            if keep:
                embs = np.asarray(embedder.embed_many([c for c, _, _ in keep]), dtype=np.float32)
                for emb, (_, view_id, old_model) in zip(embs, keep, strict=True):
                    updates.append(
                        (_embedding_blob(emb), int(emb.size), model_id, view_id, old_model)
                    )
            done = min(start + batch, len(todo))
            if progress is not None:
                progress(done, len(todo))
            if time.monotonic() - last_log > 2.0 or done == len(todo):
                logger.info("re-embedded %d/%d views", done, len(todo))
                last_log = time.monotonic()
        with self.transaction("re-embedding the views for the new model") as c:
            c.executemany(
                "UPDATE views SET embedding = ?, dim = ?, model_id = ? WHERE id = ? AND model_id = ?",
                updates,
            )
            c.executemany(
                "DELETE FROM views WHERE id = ? AND model_id = ?",
                [(view_id, old_model) for view_id, old_model, _, _ in unreadable],
            )
            emptied = sorted(
                {
                    name
                    for _, _, pid, name in unreadable
                    if c.execute("SELECT 1 FROM views WHERE product_id = ?", (pid,)).fetchone()
                    is None
                }
            )
            self._bump(c)
        for name in emptied:
            logger.warning(
                "product %r has no views left and cannot be recognised: enroll it again with "
                "--append (`python -m device enroll %s --append`) or delete it",
                name,
                json.dumps(name),
            )
        return len(updates)

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

    def log_event(self, event: dict[str, Any]) -> None:
        box = event.get("box")
        with self._failures("logging a recognition event"):
            self.conn.execute(
                "INSERT INTO events(ts, label, status, score, runner_up, runner_up_score, box, "
                "latency_ms, model_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.get("time") or utc_now(),
                    event.get("label"),
                    event.get("status", ""),
                    event.get("score"),
                    event.get("runner_up"),
                    event.get("runner_up_score"),
                    json.dumps(box) if box is not None else None,
                    event.get("latency_ms"),
                    event.get("model_id"),
                ),
            )
            self._events_since_trim += 1
            if self._events_since_trim >= 1000:
                self._events_since_trim = 0
                self.conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                    (MAX_EVENTS,),
                )

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._failures("reading the events"):
            cur = self.conn.execute(
                "SELECT ts, label, status, score, runner_up, runner_up_score, box, latency_ms, "
                "model_id FROM events ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            item["box"] = json.loads(item["box"]) if item["box"] else None
            out.append(item)
        return out[::-1]


def _embedding_blob(emb: np.ndarray) -> bytes:
    v = np.asarray(emb, dtype="<f4").reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("an embedding holds NaN or infinite values")
    return v.tobytes()


# --- export / import -----------------------------------------------------------------------------


def export_gallery(gallery: Gallery, path: str | Path) -> int:
    """Write every product (views' embeddings, model ids and crops) to one zip file; the number of
    products. Written to a temporary name first, so a crash leaves no half file; the temporary
    file is removed whatever happens. A bad destination is a ValueError that says so."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: give the name of the file to write, e.g. {path / 'products.zip'}"
        )
    if not path.parent.is_dir():
        raise ValueError(
            f"cannot write {path}: the folder {path.parent} does not exist; create it or give "
            "another path"
        )
    tmp = path.with_name(path.name + ".tmp")
    try:
        try:
            n = _write_export(gallery, tmp)
            tmp.replace(path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ValueError(
            f"cannot write the export file {path} ({exc.strerror or exc}): give a path in a "
            "folder that the user running prodrec can write to, on a disk with free space"
        ) from exc
    return n


def _write_export(gallery: Gallery, tmp: Path) -> int:
    with gallery._failures("reading the products to export"):
        conn = gallery.conn
        products = conn.execute(
            "SELECT id, name, code, created FROM products ORDER BY id"
        ).fetchall()
        items: list[dict[str, Any]] = []
        embs: list[np.ndarray] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for pid, name, code, created in products:
                views: list[dict[str, Any]] = []
                for vid, emb, model_id, crop in conn.execute(
                    "SELECT id, embedding, model_id, crop FROM views WHERE product_id = ? "
                    "ORDER BY id",
                    (pid,),
                ):
                    arc = f"crops/{vid:08d}.jpg"
                    zf.writestr(arc, crop)
                    views.append({"crop": arc, "model_id": model_id, "row": len(embs)})
                    embs.append(np.frombuffer(emb, dtype="<f4"))
                items.append({"name": name, "code": code, "created": created, "views": views})
            dims = {e.size for e in embs}
            if len(dims) > 1:  # views of different models: one per row, zero-padded to the widest
                matrix = np.zeros((len(embs), max(dims)), dtype="<f4")
                for i, e in enumerate(embs):
                    matrix[i, : e.size] = e
            else:
                matrix = np.stack(embs).astype("<f4") if embs else np.zeros((0, 0), "<f4")
            buf = io.BytesIO()
            np.save(buf, matrix)
            zf.writestr("embeddings.npy", buf.getvalue())
            manifest = {
                "format": EXPORT_FORMAT,
                "format_version": EXPORT_VERSION,
                "exported": utc_now(),
                "dims": [int(e.size) for e in embs],
                "products": items,
            }
            zf.writestr("gallery.json", json.dumps(manifest, indent=1))
    return len(products)


@dataclass(frozen=True, eq=False)  # holds an array: no field-wise ==
class ExportView:
    crop: bytes  # JPEG, checked readable
    model_id: str
    embedding: np.ndarray  # float32, as made by `model_id`


@dataclass(frozen=True)
class ExportProduct:
    name: str
    code: str | None
    created: str | None
    views: tuple[ExportView, ...]


@dataclass(frozen=True)
class GalleryExport:
    """The checked content of a `gallery export` file (see `read_gallery_export`)."""

    path: Path
    products: tuple[ExportProduct, ...]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_gallery_export(path: str | Path) -> GalleryExport:
    """Read and check a `gallery export` file completely, without any database: its structure,
    its embeddings against `dims`, and that every crop is a readable JPEG. A damaged file is a
    ValueError "PATH is not a valid gallery export: WHAT", so an import stores nothing (and the
    caller can check the file before opening, or creating, the database)."""
    path = Path(path)

    def bad(what: str) -> ValueError:
        return ValueError(
            f"{path} is not a valid gallery export: {what}; make a new one with "
            "`python -m device gallery export` on the device it came from"
        )

    if not path.exists():
        raise ValueError(f"{path} does not exist: give the .zip file written by `gallery export`")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the .zip file written by `gallery export`")
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path} is not a gallery export ({exc}); make one with `gallery export`"
        ) from exc

    def member(name: str, what: str) -> bytes:
        try:
            return zf.read(name)
        except KeyError as exc:
            raise bad(f"{what} is missing") from exc
        except (
            OSError,
            EOFError,
            RuntimeError,  # encrypted
            NotImplementedError,  # an unknown compression method
            zipfile.BadZipFile,  # e.g. a CRC mismatch
            zlib.error,
        ) as exc:
            raise bad(f"{what} is damaged ({exc})") from exc

    with zf:
        raw = member("gallery.json", "gallery.json")
        try:
            manifest = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise bad(f"gallery.json is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path} is not a prodrec gallery export")
        if manifest.get("format_version") != EXPORT_VERSION:
            raise ValueError(
                f"{path} has export format version {manifest.get('format_version')}, this software "
                f"reads {EXPORT_VERSION}: update prodrec"
            )
        raw = member("embeddings.npy", "embeddings.npy")
        try:
            matrix = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise bad(f"embeddings.npy is not a readable array ({exc})") from exc
        if not isinstance(matrix, np.ndarray) or matrix.ndim != 2 or matrix.dtype.kind != "f":
            raise bad("embeddings.npy is not a 2-D array of floats")
        matrix = matrix.astype("<f4")
        if not np.all(np.isfinite(matrix)):
            raise bad("embeddings.npy holds NaN or infinite values")
        dims = manifest.get("dims")
        if not isinstance(dims, list) or not all(_is_int(d) and d > 0 for d in dims):
            raise bad('"dims" is not a list of positive whole numbers')
        if len(dims) != matrix.shape[0]:
            raise bad(
                f'"dims" lists {len(dims)} embeddings, embeddings.npy holds {matrix.shape[0]}'
            )
        if dims and max(dims) != matrix.shape[1]:
            raise bad(
                f'the longest embedding in "dims" has {max(dims)} values, the rows of '
                f"embeddings.npy {matrix.shape[1]}"
            )
        for i, d in enumerate(dims):
            if np.any(matrix[i, d:]):  # the export pads shorter rows with zeros
                raise bad(f'"dims" gives row {i} {d} values, but embeddings.npy holds more')
        items = manifest.get("products")
        if not isinstance(items, list):
            raise bad('"products" is not a list')
        products: list[ExportProduct] = []
        names: set[str] = set()
        model_dims: dict[str, int] = {}
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise bad(f"product {i} is not an object")
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                raise bad(f"product {i} has no name (or a blank one)")
            name = name.strip()  # as enroll stores names
            if name in names:
                raise bad(f"the product {name!r} appears twice")
            code, created, views_in = item.get("code"), item.get("created"), item.get("views")
            if not (code is None or isinstance(code, str)):
                raise bad(f"the code of product {name!r} is not text")
            if not (created is None or isinstance(created, str)):
                raise bad(f"the creation time of product {name!r} is not text")
            if not isinstance(views_in, list):
                raise bad(f"the views of product {name!r} are not a list")
            views: list[ExportView] = []
            for j, view in enumerate(views_in, 1):
                if not isinstance(view, dict):
                    raise bad(f"view {j} of product {name!r} is not an object")
                arc, model_id, row = view.get("crop"), view.get("model_id"), view.get("row")
                if not isinstance(arc, str) or not isinstance(model_id, str) or not model_id:
                    raise bad(f"view {j} of product {name!r} has no crop or model_id")
                if not _is_int(row) or not 0 <= row < len(dims):
                    raise bad(
                        f"view {j} of product {name!r} points to row {row!r} of embeddings.npy, "
                        f"which has {len(dims)} rows"
                    )
                what = f"the crop {arc} of product {name!r}"
                crop = member(arc, what)
                # Checked now, for every view: a crop is re-embedded whenever the model changes.
                if _decode_crop(crop) is None:
                    raise bad(f"{what} is not a readable JPEG")
                emb = matrix[row, : dims[row]].copy()
                if model_dims.setdefault(model_id, emb.size) != emb.size:
                    raise bad(
                        f"the views of model {model_id[:12]} have different sizes "
                        f"({model_dims[model_id]} and {emb.size} values)"
                    )
                views.append(ExportView(crop, model_id, emb))
            products.append(ExportProduct(name, code, created, tuple(views)))
            names.add(name)
    return GalleryExport(path, tuple(products))


@dataclass(frozen=True)
class ImportResult:
    added: list[str]
    skipped: list[str]  # names that already existed (not replaced)
    reembedded: int  # views re-embedded because the export came from another model


def import_gallery(
    gallery: Gallery,
    source: str | Path | GalleryExport,
    embedder: EmbedderLike,
    *,
    replace: bool = False,
) -> ImportResult:
    """Add the products of an export file (a path, or one read by `read_gallery_export`) in one
    transaction (all or nothing).

    Views made by the current model keep their embedding; views made by another model are
    re-embedded from their crop with `embedder` (an export always holds the crops; one without
    them is refused)."""
    export = source if isinstance(source, GalleryExport) else read_gallery_export(source)
    target = embedder.model_id
    _check_dim(gallery, export, embedder)
    existing = {p.name for p in gallery.products()}
    plan: list[tuple[ExportProduct, list[tuple[bytes, int, bytes]]]] = []
    reembedded = 0
    for product in export.products:
        if product.name in existing and not replace:
            continue
        rows = [
            (_embedding_blob(v.embedding), int(v.embedding.size), v.crop)
            for v in product.views
            if v.model_id == target
        ]
        redo = [v.crop for v in product.views if v.model_id != target]
        if redo:
            images = [im for im in map(_decode_crop, redo) if im is not None]
            if len(images) != len(redo):  # read_gallery_export checked them: only if built by hand
                raise ValueError(
                    f"{export.path} is not a valid gallery export: a crop of product "
                    f"{product.name!r} is not a readable JPEG"
                )
            embs = embedder.embed_many(images)
            rows += [
                (_embedding_blob(e), int(np.asarray(e).size), c)
                for e, c in zip(embs, redo, strict=True)
            ]
            reembedded += len(redo)
        plan.append((product, rows))
    added: list[str] = []
    skipped = [p.name for p in export.products if p.name in existing and not replace]
    with gallery.transaction(f"importing {export.path}") as c:
        present = {r[0] for r in c.execute("SELECT name FROM products")}
        for product, rows in plan:
            if product.name in present:
                if not replace:  # enrolled by another process since the check above
                    skipped.append(product.name)
                    continue
                c.execute("DELETE FROM products WHERE name = ?", (product.name,))
            gallery._insert(
                product.name, product.code, rows, target, created=product.created, conn=c
            )
            added.append(product.name)
    logger.info(
        "imported %d products (%d skipped, %d views re-embedded)",
        len(added),
        len(skipped),
        reembedded,
    )
    return ImportResult(added, skipped, reembedded)


def _check_dim(gallery: Gallery, export: GalleryExport, embedder: EmbedderLike) -> None:
    """Views of the current model that keep their exported embedding must have its size, or
    `Gallery.load` could not stack them with the others and the app would no longer start."""
    target = embedder.model_id
    sizes = {v.embedding.size for p in export.products for v in p.views if v.model_id == target}
    if not sizes:
        return
    dim = getattr(embedder, "dim", None)
    if _is_int(dim):
        expected = {int(dim)}
    else:
        with gallery._failures("reading the stored views"):
            rows = gallery.conn.execute(
                "SELECT DISTINCT dim FROM views WHERE model_id = ?", (target,)
            ).fetchall()
        expected = {int(r[0]) for r in rows}
    if expected and sizes != expected:
        raise ValueError(
            f"{export.path} is not a valid gallery export: its embeddings of this model "
            f"({target[:12]}) have {sorted(sizes)} values, the model makes {sorted(expected)}"
        )
