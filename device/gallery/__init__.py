"""The on-device product database (SQLite, standard library `sqlite3`).

    products(id, name UNIQUE, code, created)
    views(id, product_id -> products, crop JPEG BLOB, created)
    embeddings(view_id -> views, model_id, embedding float32 BLOB, dim, created)  -- one per model
    events(id, ts, label, status, score, runner_up, runner_up_score, box, latency_ms, model_id,
           best, crop_box, frame, crop_file, uid)   -- the event's JSON line, field for field
    meta(key, value)   -- 'products_rev': bumped by every change to products or views

WAL mode and a busy timeout let `enroll` write while `run` reads in another process; `run` notices
the change cheaply (`PRAGMA data_version`, then `products_rev`) and reloads its matcher. A product
is written with all its views in one transaction: whole or not at all. Every view keeps its crop,
so when the model changes every view is re-embedded from it (`reembed`) and no product is lost.
A view keeps one embedding per model (`EmbedderLike.embedding_id`: the model file and the
preprocessing its bundle declares), so two models share one database: each embeds a view once,
and neither overwrites the other's embeddings (schema 6; before, a view had one embedding).
The schema version is `PRAGMA user_version`; `_MIGRATIONS[i]` takes version i to i + 1. Opening
checks the version and the tables, migrates, and probes that the file is writable in one write
transaction, so two processes opening a new file at once cannot both create the schema.
Every SQLite failure (disk full, read-only file, busy, damaged) surfaces as a `GalleryError` that
says what to do.

Split along its seams: `db` (connection, transactions, SQLite error translation), `schema`
(version and migrations), `products` (products, views, change detection), `reembed`, `eventlog`
(the events table) and `records` (the stored values and their encodings). `Gallery` is all of them.

Moving a product set between devices (export/import files) is `device/transfer.py`.
"""

from __future__ import annotations

from pathlib import Path

from .db import Database
from .eventlog import EventLog
from .records import (
    EmbedderLike,
    Product,
    View,
    decode_crop_or_none,
    decode_jpeg,
    embedding_blob,
    encode_jpeg,
    new_product_name,
    product_name,
    utc_now,
)
from .reembed import Reembedding
from .schema import _MIGRATIONS, SCHEMA_VERSION, TABLES, _v0_to_v1

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "_MIGRATIONS",
    "Database",
    "EmbedderLike",
    "Gallery",
    "Product",
    "View",
    "_v0_to_v1",
    "decode_crop_or_none",
    "decode_jpeg",
    "embedding_blob",
    "encode_jpeg",
    "new_product_name",
    "product_name",
    "utc_now",
]


class Gallery(EventLog, Reembedding):
    """The product database; a context manager with an idempotent `close()`.

    One connection: use it from one thread at a time (DeviceApp gives each thread its own)."""

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 10.0, check: bool = True
    ) -> None:
        self._undecodable = set()
        self._data_version = None
        self._rev = None
        super().__init__(path, busy_timeout_s=busy_timeout_s, check=check)
