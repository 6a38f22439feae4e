"""Products and their views: listing, storing (a product with all its views in one transaction),
renaming, deleting, the embeddings of one model, and noticing changes made by other processes.

A view keeps one embedding per model (table `embeddings`, keyed by the embedder's
`embedding_id`): models share the database, and none overwrites another's embeddings."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import GalleryError, ProductExists, ProductNotFound
from .records import (
    Product,
    View,
    decode_crop_or_none,
    embedding_blob,
    encode_jpeg,
    new_product_name,
    product_name,
    utc_now,
)
from .schema import Schema

logger = logging.getLogger(__name__)

# SQL: the view `v` has no embedding of the model given as the parameter.
NO_EMBEDDING = "NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.view_id = v.id AND e.model_id = ?)"
# SQL: joins the view `v` to `e`, the embedding it was stored with (its first).
_FIRST = (
    "JOIN embeddings e ON e.rowid = "
    "(SELECT MIN(rowid) FROM embeddings WHERE embeddings.view_id = v.id)"
)


class ProductStore(Schema):
    # Set by Gallery.__init__: what `changed` saw last.
    _data_version: int | None
    _rev: int | None

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
                f"SELECT v.id, v.product_id, e.model_id, e.dim, v.created FROM views v {_FIRST} "
                "WHERE v.product_id = ? ORDER BY v.id",
                (int(product_id),),
            ).fetchall()
        return [View(*row) for row in rows]

    def view_crop(self, view_id: int) -> bytes:
        """The stored JPEG crop of a view; ProductNotFound when there is no such view."""
        crop = self.stored_crop(view_id)
        if crop is None:
            raise ProductNotFound(f"no view with id {view_id}")
        return bytes(crop)

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

    def product_rows(self) -> list[tuple[int, str, str | None, str]]:
        """(id, name, code, created) of every product in id order (an export's products)."""
        with self._failures("reading the products"):
            return [
                tuple(r)
                for r in self.conn.execute(
                    "SELECT id, name, code, created FROM products ORDER BY id"
                ).fetchall()
            ]

    def view_rows(self, product_id: int) -> Iterator[tuple[int, bytes, str, bytes]]:
        """(view id, embedding blob, its key, crop JPEG) of a product's views in id order, one at
        a time (an export holds every crop: never all in memory). One embedding a view (an export
        file's format): the one it was stored with; a device with another model re-embeds the
        crop on import."""
        with self._failures("reading the stored views"):
            yield from self.conn.execute(
                f"SELECT v.id, e.embedding, e.model_id, v.crop FROM views v {_FIRST} "
                "WHERE v.product_id = ? ORDER BY v.id",
                (int(product_id),),
            )

    def view_dims(self, model_id: str) -> set[int]:
        """The sizes of the stored embeddings of `model_id` (an embedding id: one size, or none)."""
        with self._failures("reading the stored views"):
            rows = self.conn.execute(
                "SELECT DISTINCT dim FROM embeddings WHERE model_id = ?", (model_id,)
            ).fetchall()
        return {int(r[0]) for r in rows}

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
        # Checked even when appending: a name that breaks the tables is never written.
        name = new_product_name(name)
        if not views:
            raise ValueError(f"product {name!r}: no views to store")
        rows = [
            (embedding_blob(emb), int(np.asarray(emb).size), encode_jpeg(crop, crop_size))
            for emb, crop in views
        ]
        return self.insert_product(name, code, rows, model_id, append=append)

    def insert_product(
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
        """Store a product from ready rows (embedding blob, size, crop JPEG), the embeddings
        under `model_id` (the embedder's `embedding_id`); its id. Inside the caller's transaction
        when `conn` is given (an import stores many products in one)."""

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
            for emb, dim, crop in rows:
                view_id = c.execute(
                    "INSERT INTO views(product_id, crop, created) VALUES (?, ?, ?)",
                    (pid, crop, now),
                ).lastrowid
                c.execute(
                    "INSERT INTO embeddings(view_id, model_id, embedding, dim, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (view_id, model_id, emb, dim, now),
                )
            self._bump(c)
            return int(pid)

        if conn is not None:
            return write(conn)
        with self.transaction(f"storing the product {name!r}") as c:
            return write(c)

    def rename(self, old: str, new: str) -> str:
        """Rename a product; the new name as stored."""
        # The old name is only looked up: a name stored before the rule can still be renamed.
        old, new = product_name(old), new_product_name(new)
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
        """(embeddings (N, D), product name of each view) of the views embedded by `model_id`
        (an embedder's `embedding_id`).

        A product without views of that model (e.g. none left) is simply not among them."""
        with self._failures("loading the products"):
            rows = self.conn.execute(
                "SELECT p.name, e.embedding, e.dim FROM embeddings e "
                "JOIN views v ON v.id = e.view_id JOIN products p ON p.id = v.product_id "
                "WHERE e.model_id = ? ORDER BY p.id, v.id",
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
        """How many views have no embedding of `model_id` (made by other models only)."""
        with self._failures("counting the views of older models"):
            return int(
                self.conn.execute(
                    f"SELECT COUNT(*) FROM views v WHERE {NO_EMBEDDING}", (model_id,)
                ).fetchone()[0]
            )

    def crops_without(
        self, model_id: str, batch: int = 32
    ) -> Iterator[tuple[list[str], list[np.ndarray]]]:
        """(product names, decoded crops) of the views without an embedding of `model_id`,
        `batch` at a time (memory holds one batch): for a read-only command to embed them in
        memory. Crops that cannot be decoded are left out."""
        rows = self.views_without(model_id)
        for start in range(0, len(rows), batch):
            names: list[str] = []
            images: list[np.ndarray] = []
            for view_id, _, name in rows[start : start + batch]:
                image = decode_crop_or_none(self.stored_crop(view_id))
                if image is not None:
                    names.append(name)
                    images.append(image)
            yield names, images

    def views_without(self, model_id: str) -> list[tuple[int, int, str]]:
        """(view id, product id, product name) of the views without an embedding of `model_id`,
        in view id order."""
        with self._failures("reading the views of other models"):
            return [
                (int(v), int(p), str(n))
                for v, p, n in self.conn.execute(
                    "SELECT v.id, p.id, p.name FROM views v JOIN products p "
                    f"ON p.id = v.product_id WHERE {NO_EMBEDDING} ORDER BY v.id",
                    (model_id,),
                )
            ]

    def stored_crop(self, view_id: int) -> bytes | None:
        """A view's stored JPEG crop; None when the view is gone (deleted meanwhile)."""
        with self._failures("reading the stored crops"):
            row = self.conn.execute(
                "SELECT crop FROM views WHERE id = ?", (int(view_id),)
            ).fetchone()
        return None if row is None else row[0]

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
