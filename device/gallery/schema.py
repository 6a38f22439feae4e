"""The product database's schema: its version (`PRAGMA user_version`), the migrations from each
version to the next, and the check that a file is a product database at all."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from ..errors import GalleryError
from .db import Database
from .records import product_name

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 6
TABLES = ("products", "views", "events", "meta", "embeddings")  # the tables of the current schema
# The schema each table appeared in (the others are there since schema 1).
_TABLE_SINCE = {"embeddings": 6}


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


def _v5_to_v6(conn: sqlite3.Connection) -> None:
    # One embedding per (view, model): another model adds its own instead of overwriting. The
    # stored embeddings keep the key they were made with (the model file's hash); a model keys
    # its new ones by its embedding id (device/bundle.py), so it embeds every view once more.
    _run_script(
        conn,
        """
        CREATE TABLE embeddings(
            view_id INTEGER NOT NULL REFERENCES views(id) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            embedding BLOB NOT NULL,
            dim INTEGER NOT NULL,
            created TEXT NOT NULL,
            PRIMARY KEY (view_id, model_id));
        CREATE INDEX embeddings_model ON embeddings(model_id);
        INSERT INTO embeddings(view_id, model_id, embedding, dim, created)
            SELECT id, model_id, embedding, dim, created FROM views;
        ALTER TABLE views DROP COLUMN embedding;
        ALTER TABLE views DROP COLUMN dim;
        ALTER TABLE views DROP COLUMN model_id
        """,
    )


# _MIGRATIONS[i] migrates a database at user_version i to i + 1 (inside one transaction).
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v0_to_v1,
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
    _v4_to_v5,
    _v5_to_v6,
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


class Schema(Database):
    """A Database whose opening checks, migrates and proves writable the product schema."""

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
        # Every schema has the tables of its version: a file lacking one is damaged (or another
        # program's) and is not migrated.
        missing = [t for t in TABLES if t not in names and _TABLE_SINCE.get(t, 1) <= version]
        if missing:
            raise GalleryError(self._corrupt(f"the tables {', '.join(missing)} are missing"))
