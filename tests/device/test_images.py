"""Decoding photos with bounded memory: the header's size checked before decoding, photos reduced
to what they are needed for as they are read."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.enroll import enroll_from_images, photo_side
from device.gallery import Gallery
from device.images import ImageTooLargeError, decode_image, image_size, load_image

from .conftest import FIXTURE, make_config
from .fakes import FakeEmbedder


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few dozen bytes (a decompression bomb's
    header: the pixel data never needs to exist for the size check to matter)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, height // 50), max(2, width // 50), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize(
    ("ext", "params"),
    [
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless
        (".bmp", []),
        (".tiff", []),
    ],
)
def test_image_size_reads_the_header_of_each_format(ext: str, params: list[int]) -> None:
    ok, buf = cv2.imencode(ext, photo(53, 37), params)
    assert ok
    assert image_size(buf) == (53, 37)
    assert image_size(buf[:10]) is None  # cut short: unknown, never a wrong size


def test_image_size_of_gif_and_unknown_bytes() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 10
    assert image_size(gif) == (640, 480)
    assert image_size(b"not an image at all") is None
    assert image_size(b"") is None


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20_000, 20_000))  # 400 MP, 1.2 GB decoded
    assert bomb.stat().st_size < 200

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although its header is over the limit")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png declares 20000x20000 pixels"):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError, match="more than the 1 MP allowed"):
        decode_image(png_header_only(1001, 1000), "x", max_pixels=1_000_000)


def test_a_large_jpeg_is_reduced_while_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    ok, buf = cv2.imencode(".jpg", photo(2000, 1500))
    assert ok
    flags: list[int] = []
    real = cv2.imdecode

    def spy(data: np.ndarray, flag: int) -> np.ndarray:
        flags.append(flag)
        return real(data, flag)

    monkeypatch.setattr(cv2, "imdecode", spy)
    image = decode_image(buf, max_side=240)
    # 2000 / 8 = 250 >= 240: libjpeg decodes at 1/8 scale, then the area shrink to 240.
    assert flags == [cv2.IMREAD_REDUCED_COLOR_8]
    assert image.shape == (180, 240, 3)
    # The reduced image looks like the full one shrunk (the same photo, not a crop or a tile).
    full = cv2.resize(real(buf, cv2.IMREAD_COLOR), (240, 180), interpolation=cv2.INTER_AREA)
    assert float(np.abs(image.astype(int) - full.astype(int)).mean()) < 3.0
    flags.clear()
    assert decode_image(buf, max_side=1200).shape == (900, 1200, 3)
    assert flags == [cv2.IMREAD_COLOR]  # 2000 / 2 < 1200: decoded in full, then shrunk


def test_enroll_skips_a_photo_over_the_limit_and_keeps_only_reduced_views(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, enroll={"max_image_pixels": 2_000_000})
    tree = tmp_path / "photos" / "Banana"
    shutil.copytree(FIXTURE / "train" / "Banana", tree)
    (tree / "zz_huge.png").write_bytes(png_header_only(20_000, 20_000))
    cv2.imwrite(str(tree / "zz_big.jpg"), photo(1600, 1200, seed=3))  # 1.9 MP: accepted
    fake = FakeEmbedder()
    seen: list[tuple[int, ...]] = []
    embed = fake.embed
    fake.embed = lambda crop: seen.append(crop.shape) or embed(crop)  # type: ignore[method-assign]
    with Gallery(cfg.gallery.path) as g:
        [result] = enroll_from_images(
            tree, embedder=fake, gallery=g, config=cfg, say=lambda s: None
        )
    assert any("zz_huge.png" in s and "20000x20000" in s for s in result.skipped)
    assert result.views == len(list(tree.glob("*.jpg")))
    side = photo_side(fake, cfg)
    assert seen and max(max(shape[:2]) for shape in seen) == side


def test_photo_side_is_the_larger_of_the_crop_and_the_model_input(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, gallery={"crop_size": 128})
    fake = FakeEmbedder()
    assert photo_side(fake, cfg) == 128  # no input spec: the stored crop's size
    fake.meta.input = type("Spec", (), {"height": 224, "width": 224})()
    assert photo_side(fake, cfg) == 224
