"""Uploaded photos: format and size read from the header, limits, decoding like --from-images."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from device.images import decode_image
from device.web.uploads import UploadError, check_photo, image_size


def _encoded(ext: str, w: int = 37, h: int = 23) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("ext", "fmt"), [(".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".webp", "WebP")]
)
def test_image_size_from_header(ext: str, fmt: str) -> None:
    assert image_size(_encoded(ext)) == (fmt, 37, 23)


def test_image_size_of_progressive_jpeg_and_gif() -> None:
    img = np.full((40, 50, 3), 128, np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size(buf.tobytes()) == ("JPEG", 50, 40)
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 10
    assert image_size(gif) == ("GIF", 640, 480)


def test_not_an_image() -> None:
    assert image_size(b"hello, this is text") is None
    assert image_size(b"\xff\xd8\xff") is None  # truncated
    with pytest.raises(UploadError, match="not an image") as err:
        check_photo(b"%PDF-1.4 ...", "a.pdf", max_bytes=10_000, max_pixels=10**6)
    assert err.value.status == 415


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_too_many_pixels_refused_before_decoding() -> None:
    # A 100-byte file claiming 30000 x 30000 pixels: refused from the header alone.
    bomb = _png_header(30_000, 30_000) + b"\x00" * 50
    with pytest.raises(UploadError, match="max_upload_pixels") as err:
        check_photo(bomb, "bomb.png", max_bytes=10_000, max_pixels=50_000_000)
    assert err.value.status == 413


def test_too_many_bytes() -> None:
    data = _encoded(".png", 200, 200)
    with pytest.raises(UploadError, match="max_upload_bytes") as err:
        check_photo(data, "big.png", max_bytes=len(data) - 1, max_pixels=10**6)
    assert err.value.status == 413


def test_a_good_photo_decodes_like_from_images() -> None:
    data = _encoded(".png", 64, 48)
    img = check_photo(data, "ok.png", max_bytes=10**6, max_pixels=10**6)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, decode_image(data))


def test_truncated_body_is_refused() -> None:
    data = _encoded(".png", 64, 48)[:60]  # a valid header, no image data
    with pytest.raises(UploadError, match="not a readable image"):
        check_photo(data, "cut.png", max_bytes=10**6, max_pixels=10**6)


def test_a_photo_is_reduced_while_decoded_like_from_images() -> None:
    data = _encoded(".jpg", 800, 600)
    img = check_photo(data, "big.jpg", max_bytes=10**7, max_pixels=10**7, max_side=200)
    assert img.shape == (150, 200, 3)
    assert np.array_equal(img, decode_image(data, max_side=200))


def test_a_format_the_page_does_not_take_is_refused_from_its_header() -> None:
    data = _encoded(".tiff", 40, 30)
    assert image_size(data) is None  # device.images reads TIFF headers; the page takes none
    with pytest.raises(UploadError, match="not an image the device reads") as err:
        check_photo(data, "a.tiff", max_bytes=10**6, max_pixels=10**6)
    assert err.value.status == 415
