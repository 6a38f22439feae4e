"""Moving a product set between devices: `gallery export FILE` / `gallery import FILE`.

One zip file: gallery.json (products, their views' model ids and crop names, each view's
embedding size), embeddings.npy (one row per view, zero-padded to the widest) and the JPEG crops.
`read_gallery_export` checks such a file completely without touching any database, so a damaged
file is refused before anything is imported (or a database created); `import_gallery` stores the
products in one transaction, re-embedding from their crops the views another model made.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_path
from .gallery import (
    EmbedderLike,
    Gallery,
    decode_crop_or_none,
    embedding_blob,
    product_name,
    utc_now,
)

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "prodrec-gallery"
EXPORT_VERSION = 1


def export_gallery(gallery: Gallery, path: str | Path, *, overwrite: bool = False) -> int:
    """Write every product (views' embeddings, model ids and crops) to one zip file; the number of
    products. Written to a temporary name first, so a crash leaves no half file; the temporary
    file is removed whatever happens. A bad destination is a ValueError that says so; an existing
    file is replaced only with `overwrite`, and the database itself never."""
    path = Path(path)
    db = Path(gallery.path).resolve()
    if path.resolve() in {db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")}:
        raise ValueError(
            f"{path} is the product database itself: give another file name, e.g. products.zip"
        )
    if path.is_file() and not overwrite:
        raise ValueError(f"{path} already exists: give another name, or --overwrite to replace it")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: give the name of the file to write, e.g. {path / 'products.zip'}"
        )
    if not path.parent.is_dir():
        raise ValueError(
            f"cannot write {path}: the folder {path.parent} does not exist; create it or give "
            "another path"
        )
    try:
        # A fresh name: never a file of the user's (or the database) that happens to be there.
        with atomic_path(path) as tmp:
            n = _write_export(gallery, tmp)
    except OSError as exc:
        raise ValueError(
            f"cannot write the export file {path} ({exc.strerror or exc}): give a path in a "
            "folder that the user running prodrec can write to, on a disk with free space"
        ) from exc
    return n


def _write_export(gallery: Gallery, tmp: Path) -> int:
    with gallery.snapshot():
        products = gallery.product_rows()
        items: list[dict[str, Any]] = []
        embs: list[np.ndarray] = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for pid, name, code, created in products:
                views: list[dict[str, Any]] = []
                for vid, emb, model_id, crop in gallery.view_rows(pid):
                    if decode_crop_or_none(crop) is None:
                        # It could never be re-embedded, and would make the file unimportable.
                        logger.warning(
                            "product %r: view %d left out of the export (its crop cannot be "
                            "decoded)",
                            name,
                            vid,
                        )
                        continue
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
            name = product_name(name)  # as enroll stores names
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
                if decode_crop_or_none(crop) is None:
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
    added: list[str]  # every product written, the replaced ones included
    skipped: list[str]  # names that already existed (not replaced)
    reembedded: int  # views re-embedded because the export came from another model
    replaced: list[str] = field(default_factory=list)  # stored products overwritten (--replace)


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
            (embedding_blob(v.embedding), int(v.embedding.size), v.crop)
            for v in product.views
            if v.model_id == target
        ]
        redo = [v.crop for v in product.views if v.model_id != target]
        if redo:
            images = [im for im in map(decode_crop_or_none, redo) if im is not None]
            if len(images) != len(redo):  # read_gallery_export checked them: only if built by hand
                raise ValueError(
                    f"{export.path} is not a valid gallery export: a crop of product "
                    f"{product.name!r} is not a readable JPEG"
                )
            embs = embedder.embed_many(images)
            rows += [
                (embedding_blob(e), int(np.asarray(e).size), c)
                for e, c in zip(embs, redo, strict=True)
            ]
            reembedded += len(redo)
        plan.append((product, rows))
    added: list[str] = []
    replaced: list[str] = []
    skipped = [p.name for p in export.products if p.name in existing and not replace]
    with gallery.transaction(f"importing {export.path}") as c:
        present = {r[0] for r in c.execute("SELECT name FROM products")}
        for product, rows in plan:
            if product.name in present:
                if not replace:  # enrolled by another process since the check above
                    skipped.append(product.name)
                    continue
                c.execute("DELETE FROM products WHERE name = ?", (product.name,))
                replaced.append(product.name)
            gallery.insert_product(
                product.name, product.code, rows, target, created=product.created, conn=c
            )
            added.append(product.name)
    logger.info(
        "imported %d products (%d skipped, %d views re-embedded)",
        len(added),
        len(skipped),
        reembedded,
    )
    return ImportResult(added, skipped, reembedded, replaced)


def _check_dim(gallery: Gallery, export: GalleryExport, embedder: EmbedderLike) -> None:
    """Views of the current model that keep their exported embedding must have its size, or
    `Gallery.load` could not stack them with the others and the app would no longer start."""
    target = embedder.model_id
    sizes = {v.embedding.size for p in export.products for v in p.views if v.model_id == target}
    if not sizes:
        return
    dim = getattr(embedder, "dim", None)
    expected = {int(dim)} if _is_int(dim) else gallery.view_dims(target)
    if expected and sizes != expected:
        raise ValueError(
            f"{export.path} is not a valid gallery export: its embeddings of this model "
            f"({target[:12]}) have {sorted(sizes)} values, the model makes {sorted(expected)}"
        )
