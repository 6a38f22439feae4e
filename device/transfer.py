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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    new_product_name,
    utc_now,
)
from .images import image_size

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


# Limits an export must keep, checked against the sizes the zip file declares before anything is
# read, so a crafted or damaged file is refused in milliseconds instead of exhausting a Pi's
# memory. Each is far above what a real product set needs (1,000 products with 4 views: a
# 0.3 MB gallery.json, a 2 MB embeddings.npy, 20-40 kB crops).
MAX_MANIFEST_BYTES = 16 * 2**20  # gallery.json (about 50,000 products)
MAX_EMBEDDINGS_BYTES = 128 * 2**20  # embeddings.npy
MAX_VIEWS = 250_000  # rows of embeddings.npy
MAX_EMBEDDING_SIZE = 4096  # values per embedding
MAX_CROP_BYTES = 16 * 2**20  # one crop's JPEG
MAX_CROP_PIXELS = 2048 * 2048  # a crop's declared size ([gallery] crop_size is at most 2048)
_CHUNK = 1 << 16  # members are read in chunks: zipfile inflates a whole member in one read()
REEMBED_BATCH = 32  # crops decoded and embedded at once when importing another model's views


@dataclass(frozen=True, eq=False)  # holds an array: no field-wise ==
class ExportView:
    crop: str  # the crop's member in the zip file (a JPEG, checked readable)
    model_id: str  # its embedding's key: an embedding id (a model id in older files)
    embedding: np.ndarray  # float32, as made by `model_id`


@dataclass(frozen=True)
class ExportProduct:
    name: str
    code: str | None
    created: str | None
    views: tuple[ExportView, ...]


@dataclass(frozen=True)
class GalleryExport:
    """The checked content of a `gallery export` file (see `read_gallery_export`). The crops stay
    in the file: `crops()` reads them one at a time, so importing holds one product's at most."""

    path: Path
    products: tuple[ExportProduct, ...]

    @contextmanager
    def crops(self) -> Iterator[Callable[[str], bytes]]:
        """A reader of crops by member name, the file opened once for all of them."""
        with _open_export(self.path) as zf:
            yield lambda arc: _member(zf, self.path, arc, f"the crop {arc}", MAX_CROP_BYTES)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid gallery export: {what}; make a new one with "
        "`python -m device gallery export` on the device it came from"
    )


@contextmanager
def _open_export(path: Path) -> Iterator[zipfile.ZipFile]:
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
    with zf:
        yield zf


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Any failure reading a member (CRC mismatch, truncation, encryption, unknown compression)
    as the usual "not a valid gallery export" error."""
    try:
        yield
    except (
        OSError,
        EOFError,
        RuntimeError,  # encrypted
        NotImplementedError,  # an unknown compression method
        zipfile.BadZipFile,  # e.g. a CRC mismatch, or more data than the declared size
        zlib.error,
    ) as exc:
        raise _bad(path, f"{what} is damaged ({exc})") from exc


def _info(zf: zipfile.ZipFile, path: Path, name: str, what: str, limit: int) -> zipfile.ZipInfo:
    """A member's entry, its declared size checked against `limit` before anything is read."""
    try:
        info = zf.getinfo(name)
    except KeyError as exc:
        raise _bad(path, f"{what} is missing") from exc
    if info.file_size > limit:
        raise _bad(
            path,
            f"{what} declares {info.file_size:,} bytes, more than the {limit:,} an export may "
            "hold; it was not read",
        )
    return info


def _member(zf: zipfile.ZipFile, path: Path, name: str, what: str, limit: int) -> bytes:
    """A member's bytes, at most its declared size (checked against `limit` first). Read in
    chunks: `ZipFile.read` would inflate a member whole before stopping at its declared size,
    which a 2 MB file can make gigabytes."""
    info = _info(zf, path, name, what, limit)
    chunks: list[bytes] = []
    with _reading(path, what), zf.open(info) as f:
        while chunk := f.read(_CHUNK):
            chunks.append(chunk)
    return b"".join(chunks)


def _read_embeddings(zf: zipfile.ZipFile, path: Path) -> np.ndarray:
    """embeddings.npy as a float32 (rows, values) array; its header is checked against the limits
    and the member's declared size before its data is read, so a header declaring a huge array
    is a clear error, never a MemoryError."""
    what = "embeddings.npy"
    info = _info(zf, path, what, what, MAX_EMBEDDINGS_BYTES)
    fmt = np.lib.format
    with _reading(path, what), zf.open(info) as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise _bad(path, f"embeddings.npy is not a readable array ({exc})") from exc
        if len(shape) != 2 or dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise _bad(path, "embeddings.npy is not a 2-D array of floats")
        rows, cols = shape
        if rows > MAX_VIEWS or cols > MAX_EMBEDDING_SIZE:
            raise _bad(
                path,
                f"embeddings.npy declares {rows:,}x{cols:,} values, more than an export holds "
                f"(at most {MAX_VIEWS:,} views of at most {MAX_EMBEDDING_SIZE:,} values)",
            )
        size = rows * cols * dtype.itemsize
        if f.tell() + size != info.file_size:
            raise _bad(
                path,
                f"embeddings.npy declares {rows}x{cols} values ({size:,} bytes), but the file "
                f"holds {info.file_size - f.tell():,} bytes of them",
            )
        data = bytearray()
        while len(data) < size and (chunk := f.read(min(_CHUNK, size - len(data)))):
            data += chunk
    if len(data) != size:
        raise _bad(path, "embeddings.npy is cut short")
    matrix = np.frombuffer(bytes(data), dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return matrix.astype("<f4")


def read_gallery_export(path: str | Path) -> GalleryExport:
    """Read and check a `gallery export` file completely, without any database: its structure,
    its sizes against the limits above (before reading), its embeddings against `dims`, and that
    every crop is a readable JPEG of a sensible size (read and decoded one at a time). A damaged
    file is a ValueError "PATH is not a valid gallery export: WHAT", so an import stores nothing
    (and the caller can check the file before opening, or creating, the database)."""
    path = Path(path)

    def bad(what: str) -> ValueError:
        return _bad(path, what)

    with _open_export(path) as zf:
        raw = _member(zf, path, "gallery.json", "gallery.json", MAX_MANIFEST_BYTES)
        try:
            manifest = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise bad(f"gallery.json is not valid JSON ({exc})") from exc
        del raw
        if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path} is not a prodrec gallery export")
        if manifest.get("format_version") != EXPORT_VERSION:
            raise ValueError(
                f"{path} has export format version {manifest.get('format_version')}, this software "
                f"reads {EXPORT_VERSION}: update prodrec"
            )
        matrix = _read_embeddings(zf, path)
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
            try:
                name = new_product_name(name)  # as enroll stores names
            except ValueError as exc:
                raise bad(f"product {i}: {exc}") from exc
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
                # Checked now, for every view: a crop is re-embedded whenever the model changes.
                # Then dropped: the import reads it again (one product's crops at a time).
                if _decode_crop(_member(zf, path, arc, what, MAX_CROP_BYTES)) is None:
                    raise bad(f"{what} is not a readable JPEG (or larger than a crop can be)")
                emb = matrix[row, : dims[row]].copy()
                if model_dims.setdefault(model_id, emb.size) != emb.size:
                    raise bad(
                        f"the views of model {model_id[:12]} have different sizes "
                        f"({model_dims[model_id]} and {emb.size} values)"
                    )
                views.append(ExportView(arc, model_id, emb))
            products.append(ExportProduct(name, code, created, tuple(views)))
            names.add(name)
    return GalleryExport(path, tuple(products))


def _decode_crop(data: bytes) -> np.ndarray | None:
    """A crop's image; None when it is not a readable JPEG or declares more than a crop's pixels
    (refused before decoding: a few bytes can declare gigapixels)."""
    size = image_size(data)
    if size is None or size[0] * size[1] > MAX_CROP_PIXELS:
        return None
    return decode_crop_or_none(data)


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
    them is refused), in batches before the transaction, keeping only the embeddings. The crops
    are then read again, one product at a time, while they are stored: memory holds one batch
    or one product's crops, whatever the size of the file."""
    export = source if isinstance(source, GalleryExport) else read_gallery_export(source)
    target = embedder.embedding_id
    _check_dim(gallery, export, embedder)
    existing = {p.name for p in gallery.products()}
    plan = [p for p in export.products if replace or p.name not in existing]
    with export.crops() as read_crop:
        fresh = _reembed(export, plan, embedder, read_crop)
        added: list[str] = []
        replaced: list[str] = []
        skipped = [p.name for p in export.products if p.name in existing and not replace]
        with gallery.transaction(f"importing {export.path}") as c:
            present = {r[0] for r in c.execute("SELECT name FROM products")}
            for product in plan:
                if product.name in present:
                    if not replace:  # enrolled by another process since the check above
                        skipped.append(product.name)
                        continue
                    c.execute("DELETE FROM products WHERE name = ?", (product.name,))
                    replaced.append(product.name)
                rows = []
                for v in product.views:
                    emb = v.embedding if v.model_id == target else fresh[id(v)]
                    rows.append((embedding_blob(emb), int(emb.size), read_crop(v.crop)))
                gallery.insert_product(
                    product.name, product.code, rows, target, created=product.created, conn=c
                )
                added.append(product.name)
    logger.info(
        "imported %d products (%d skipped, %d views re-embedded)",
        len(added),
        len(skipped),
        len(fresh),
    )
    return ImportResult(added, skipped, len(fresh), replaced)


def _reembed(
    export: GalleryExport,
    plan: list[ExportProduct],
    embedder: EmbedderLike,
    read_crop: Callable[[str], bytes],
) -> dict[int, np.ndarray]:
    """The current model's embedding of each planned view another model made, by id(view);
    REEMBED_BATCH crops decoded at a time."""
    redo = [v for p in plan for v in p.views if v.model_id != embedder.embedding_id]
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(redo), REEMBED_BATCH):
        chunk = redo[start : start + REEMBED_BATCH]
        images = [_decode_crop(read_crop(v.crop)) for v in chunk]
        if any(im is None for im in images):  # read_gallery_export checked them: only if changed
            raise _bad(export.path, "a crop is not a readable JPEG")
        embs = np.asarray(embedder.embed_many(images), dtype=np.float32)
        out.update((id(v), e) for v, e in zip(chunk, embs, strict=True))
    return out


def _check_dim(gallery: Gallery, export: GalleryExport, embedder: EmbedderLike) -> None:
    """Views of the current model that keep their exported embedding must have its size, or
    `Gallery.load` could not stack them with the others and the app would no longer start."""
    target = embedder.embedding_id
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
