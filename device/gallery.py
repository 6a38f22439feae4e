"""The on-device product database (SQLite, standard library `sqlite3`).

    products(id, name UNIQUE, code, created)
    views(id, product_id -> products, embedding float32 BLOB, dim, model_id, crop JPEG BLOB, created)
    events(id, ts, label, status, score, runner_up, runner_up_score, box, latency_ms, model_id)
    meta(key, value)   -- 'products_rev': bumped by every change to products or views

WAL mode and a busy timeout let `enroll` write while `run` reads in another process; `run` notices
the change cheaply (`PRAGMA data_version`, then `products_rev`) and reloads its matcher. A product
is written with all its views in one transaction: whole or not at all. Every view keeps its crop,
so when the model changes every view is re-embedded from it (`reembed`) and no product is lost.
The schema version is `PRAGMA user_version`; `_MIGRATIONS[i]` takes version i to i + 1.

`export_gallery` / `import_gallery` move a product set between devices as one zip file
(gallery.json + embeddings.npy + the JPEG crops).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
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
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("the product database is not in WAL mode (%s)", mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"integrity check failed: {result}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).lower():
                raise GalleryError(self._cannot_open(exc)) from exc
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc).lower():
                raise GalleryError(self._cannot_open(exc)) from exc
            raise GalleryError(
                f"{self.path} is not a usable product database ({exc}): it is corrupt or not a "
                "prodrec database. Move it aside (the app then starts an empty one) and restore "
                "the products with `python -m device gallery import BACKUP.zip` or enroll them again"
            ) from exc

    def _cannot_open(self, exc: Exception) -> str:
        return (
            f"cannot open the product database {self.path} for writing ({exc}): check that its "
            "folder exists and is writable by the user running prodrec (the service uses "
            "/var/lib/prodrec), or set [gallery] path / --db"
        )

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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back on any exception (including KeyboardInterrupt)."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise GalleryError(
                f"the product database {self.path} is busy or read-only ({exc}); try again"
            ) from exc
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise GalleryError(
                f"{self.path} has schema version {version}, newer than this software "
                f"({SCHEMA_VERSION}): update prodrec on this device"
            )
        while version < SCHEMA_VERSION:
            logger.info("migrating the product database %s to schema %d", self.path, version + 1)
            with self.transaction():
                _MIGRATIONS[version](conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            version += 1

    # --- products ------------------------------------------------------------------------------

    def products(self) -> list[Product]:
        rows = self.conn.execute(
            "SELECT p.id, p.name, p.code, p.created, COUNT(v.id) FROM products p "
            "LEFT JOIN views v ON v.product_id = p.id GROUP BY p.id ORDER BY p.name"
        ).fetchall()
        return [Product(*row) for row in rows]

    def product(self, name: str) -> Product | None:
        return next((p for p in self.products() if p.name == name), None)

    def __len__(self) -> int:
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
        with self.transaction() as c:
            return write(c)

    def rename(self, old: str, new: str) -> None:
        new = new.strip()
        if not new:
            raise ValueError("the new name is empty")
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM products WHERE name = ?", (new,)).fetchone():
                raise ValueError(f"a product named {new!r} already exists")
            if c.execute("UPDATE products SET name = ? WHERE name = ?", (new, old)).rowcount == 0:
                raise ValueError(f"no product named {old!r} (see `python -m device products list`)")
            self._bump(c)

    def delete(self, name: str) -> None:
        with self.transaction() as c:
            if c.execute("DELETE FROM products WHERE name = ?", (name,)).rowcount == 0:
                raise ValueError(
                    f"no product named {name!r} (see `python -m device products list`)"
                )
            self._bump(c)

    # --- embeddings ----------------------------------------------------------------------------

    def load(self, model_id: str) -> tuple[np.ndarray, list[str]]:
        """(embeddings (N, D), product name of each view) of the views made by `model_id`."""
        rows = self.conn.execute(
            "SELECT p.name, v.embedding, v.dim FROM views v JOIN products p ON p.id = v.product_id "
            "WHERE v.model_id = ? ORDER BY p.id, v.id",
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
        process can still enroll meanwhile); a view changed in between is left for the next call."""
        model_id = embedder.model_id
        todo = self.conn.execute(
            "SELECT id, model_id FROM views WHERE model_id != ? ORDER BY id", (model_id,)
        ).fetchall()
        if not todo:
            return 0
        logger.info(
            "the model changed (now %s): re-embedding %d stored views from their crops",
            model_id[:12],
            len(todo),
        )
        updates: list[tuple[bytes, int, str, int, str]] = []
        last_log = time.monotonic()
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            crops = []
            for view_id, _ in chunk:
                row = self.conn.execute(
                    "SELECT crop FROM views WHERE id = ?", (view_id,)
                ).fetchone()
                crops.append(decode_jpeg(row[0]) if row else None)
            keep = [(c, v) for c, v in zip(crops, chunk, strict=True) if c is not None]
            if keep:
                embs = np.asarray(embedder.embed_many([c for c, _ in keep]), dtype=np.float32)
                for emb, (_, (view_id, old_model)) in zip(embs, keep, strict=True):
                    updates.append(
                        (_embedding_blob(emb), int(emb.size), model_id, view_id, old_model)
                    )
            done = min(start + batch, len(todo))
            if progress is not None:
                progress(done, len(todo))
            if time.monotonic() - last_log > 2.0 or done == len(todo):
                logger.info("re-embedded %d/%d views", done, len(todo))
                last_log = time.monotonic()
        with self.transaction() as c:
            c.executemany(
                "UPDATE views SET embedding = ?, dim = ?, model_id = ? WHERE id = ? AND model_id = ?",
                updates,
            )
            self._bump(c)
        return len(updates)

    # --- change detection ----------------------------------------------------------------------

    def revision(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'products_rev'").fetchone()
        return int(row[0]) if row else 0

    def changed(self) -> bool:
        """True when products or views changed since the last call (in any process).

        `PRAGMA data_version` changes only when another connection committed: a few microseconds,
        so it can be polled from the frame loop; the revision counter then ignores event rows."""
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
                "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,)
            )

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.conn.execute(
            "SELECT ts, label, status, score, runner_up, runner_up_score, box, latency_ms, model_id "
            "FROM events ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
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
    products. Written to a temporary name first, so a crash leaves no half file."""
    path = Path(path)
    conn = gallery.conn
    products = conn.execute("SELECT id, name, code, created FROM products ORDER BY id").fetchall()
    items, embs = [], []
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for pid, name, code, created in products:
            views = []
            for vid, emb, model_id, crop in conn.execute(
                "SELECT id, embedding, model_id, crop FROM views WHERE product_id = ? ORDER BY id",
                (pid,),
            ):
                arc = f"crops/{vid:08d}.jpg"
                zf.writestr(arc, crop)
                views.append({"crop": arc, "model_id": model_id, "row": len(embs)})
                embs.append(np.frombuffer(emb, dtype="<f4"))
            items.append({"name": name, "code": code, "created": created, "views": views})
        dims = {e.size for e in embs}
        if len(dims) > 1:  # views of different models: pad nothing, store them one per row
            matrix = np.zeros((len(embs), max(dims)), dtype="<f4")
            for i, e in enumerate(embs):
                matrix[i, : e.size] = e
        else:
            matrix = np.stack(embs).astype("<f4") if embs else np.zeros((0, 0), "<f4")
        import io

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
    tmp.replace(path)
    return len(products)


@dataclass(frozen=True)
class ImportResult:
    added: list[str]
    skipped: list[str]  # names that already existed (not replaced)
    reembedded: int  # views re-embedded because the export came from another model


def import_gallery(
    gallery: Gallery,
    path: str | Path,
    embedder: EmbedderLike,
    *,
    replace: bool = False,
) -> ImportResult:
    """Add the products of an export file in one transaction (all or nothing).

    Views made by the current model keep their embedding; views made by another model are
    re-embedded from their crop with `embedder` (an export always holds the crops; one without
    them is refused)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path} is not a gallery export ({exc}); make one with `gallery export`"
        ) from exc
    with zf:
        try:
            manifest = json.loads(zf.read("gallery.json"))
            import io

            matrix = np.load(io.BytesIO(zf.read("embeddings.npy")), allow_pickle=False)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a complete gallery export: {exc}") from exc
        if manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path} is not a prodrec gallery export")
        if manifest.get("format_version") != EXPORT_VERSION:
            raise ValueError(
                f"{path} has export format version {manifest.get('format_version')}, this software "
                f"reads {EXPORT_VERSION}: update prodrec"
            )
        dims = manifest.get("dims", [])
        target = embedder.model_id
        plan: list[tuple[dict[str, Any], list[tuple[bytes, int, bytes]], int]] = []
        existing = {p.name for p in gallery.products()}
        skipped, reembedded = [], 0
        for item in manifest["products"]:
            name = item["name"]
            if name in existing and not replace:
                skipped.append(name)
                continue
            rows, redo = [], []
            for view in item["views"]:
                try:
                    crop = zf.read(view["crop"])
                except KeyError as exc:
                    raise ValueError(f"{path}: crop {view['crop']} of {name!r} is missing") from exc
                if view["model_id"] == target:
                    emb = matrix[view["row"], : dims[view["row"]]]
                    rows.append((_embedding_blob(emb), int(emb.size), crop))
                else:
                    redo.append(crop)
            if redo:
                embs = embedder.embed_many([decode_jpeg(c) for c in redo])
                rows += [
                    (_embedding_blob(e), int(np.asarray(e).size), c)
                    for e, c in zip(embs, redo, strict=True)
                ]
                reembedded += len(redo)
            plan.append((item, rows, len(redo)))
    added = []
    with gallery.transaction() as c:
        for item, rows, _ in plan:
            if item["name"] in existing:
                c.execute("DELETE FROM products WHERE name = ?", (item["name"],))
            gallery._insert(
                item["name"], item.get("code"), rows, target, created=item.get("created"), conn=c
            )
            added.append(item["name"])
    logger.info(
        "imported %d products (%d skipped, %d views re-embedded)",
        len(added),
        len(skipped),
        reembedded,
    )
    return ImportResult(added, skipped, reembedded)
