"""`gallery import` with bounded memory: declared sizes and counts checked before reading, a crafted
embeddings.npy header refused clearly, crops read a product (or a batch) at a time."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import transfer
from device.gallery import Gallery
from device.transfer import export_gallery, import_gallery, read_gallery_export

from .fakes import FakeEmbedder


@pytest.fixture
def export_file(tmp_path: Path, photos) -> Path:
    """An export of P1 (2 views) and P2 (1 view) made by model "a..."."""
    a = FakeEmbedder("a" * 64)
    with Gallery(tmp_path / "src.db") as src:
        src.add_product("P1", [(a.embed(c), c) for c in (photos[0][1], photos[1][1])], a.model_id)
        src.add_product("P2", [(a.embed(photos[2][1]), photos[2][1])], a.model_id)
        export_gallery(src, tmp_path / "set.zip")
    return tmp_path / "set.zip"


def rewrite(src: Path, dst: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, members.get(name, zin.read(name)))
    return dst


def npy_header(shape: tuple[int, int], dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def test_a_member_declaring_more_than_the_limit_is_not_read(
    tmp_path: Path, export_file: Path
) -> None:
    # 20 MB of spaces deflate to ~20 kB: the zip is small, its gallery.json would not be.
    big = rewrite(export_file, tmp_path / "big.zip", {"gallery.json": b" " * (20 * 2**20)})
    assert big.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"gallery\.json declares 20,971,520 bytes, more than"):
        read_gallery_export(big)
    assert time.perf_counter() - t0 < 0.5  # refused from the directory, not after inflating


def test_a_member_larger_than_its_declared_size_is_damaged_and_read_in_chunks(
    tmp_path: Path, export_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The zip's two records of gallery.json's size say 100 bytes; its data inflates to 50 MB.
    path = rewrite(export_file, tmp_path / "lie.zip", {"gallery.json": b" " * (50 * 2**20)})
    data = bytearray(path.read_bytes())
    name = b"gallery.json"
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig + b"")
        while at >= 0:
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[name_at : name_at + len(name)]) == name:
                struct.pack_into("<I", data, at + offset, 100)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    reads: list[int] = []
    real_open = zipfile.ZipFile.open

    def spy_open(self: zipfile.ZipFile, *args: object, **kwargs: object) -> object:
        f = real_open(self, *args, **kwargs)
        real_read = f.read
        f.read = lambda n=-1: reads.append(n) or real_read(n)  # type: ignore[method-assign]
        return f

    monkeypatch.setattr(zipfile.ZipFile, "open", spy_open)
    with pytest.raises(
        ValueError, match=r"lie\.zip is not a valid gallery export: gallery\.json is damaged"
    ):
        read_gallery_export(path)
    assert reads and all(0 < n <= 2**16 for n in reads)  # never one whole-member read


def test_a_crafted_embeddings_header_is_a_clear_error_not_memory_error(
    tmp_path: Path, export_file: Path
) -> None:
    huge = rewrite(export_file, tmp_path / "huge.zip", {"embeddings.npy": npy_header((10**9, 192))})
    with pytest.raises(ValueError, match=r"declares 1,000,000,000x192 values, more than an export"):
        read_gallery_export(huge)
    short = npy_header((3, 192)) + b"\x00" * 100
    cut = rewrite(export_file, tmp_path / "cut.zip", {"embeddings.npy": short})
    with pytest.raises(ValueError, match=r"declares 3x192 values \(2,304 bytes\), but the file"):
        read_gallery_export(cut)
    objects = rewrite(
        export_file, tmp_path / "obj.zip", {"embeddings.npy": npy_header((3, 2), "|O")}
    )
    with pytest.raises(ValueError, match="not a 2-D array of floats"):
        read_gallery_export(objects)


def test_a_crop_declaring_more_pixels_than_a_crop_has_is_not_decoded(
    tmp_path: Path, export_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    jpeg = bytearray(buf.tobytes())
    sof = jpeg.find(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, 30_000, 30_000)  # a 900 MP header on 16x16 data
    bomb = rewrite(export_file, tmp_path / "bomb.zip", {"crops/00000001.jpg": bytes(jpeg)})

    def no_decoding(*args: object) -> None:
        raise AssertionError("a crop over the limit was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ValueError, match=r"crops/00000001\.jpg .* not a readable JPEG \(or larger"):
        read_gallery_export(bomb)


def test_import_streams_the_crops(
    tmp_path: Path, export_file: Path, monkeypatch: pytest.MonkeyPatch, photos
) -> None:
    export = read_gallery_export(export_file)
    # The checked export names its crops; their bytes stay in the file until the import.
    assert all(isinstance(v.crop, str) for p in export.products for v in p.views)
    monkeypatch.setattr(transfer, "REEMBED_BATCH", 2)
    other = FakeEmbedder("e" * 64)
    batches: list[int] = []
    embed_many = other.embed_many
    other.embed_many = lambda crops: batches.append(len(crops)) or embed_many(crops)  # type: ignore[method-assign]
    with Gallery(tmp_path / "dst.db") as dst:
        res = import_gallery(dst, export, other)
        assert res.reembedded == 3 and batches == [2, 1]
        emb, labels = dst.load(other.model_id)
    assert labels == ["P1", "P1", "P2"]
    assert float(emb[2] @ other.embed(photos[2][1])) > 0.98
