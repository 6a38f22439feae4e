"""Reading images from files the way the device sees frames: 8-bit, 3-channel, BGR (OpenCV's order).

Grayscale, RGBA, palette and 16-bit files are converted, not rejected. Used by the device (enroll from
photos), by training (so decoding is identical on both sides) and by convert (calibration images).

Memory is bounded before any pixel is decoded: the size the file's header declares (`image_size`,
read from the bytes, no decoder involved) is checked against a pixel limit, because a small PNG can
decode to gigabytes. A caller that needs only a small image (`max_side`) gets it reduced while it
is decoded where the format allows (JPEG: libjpeg's scaled decoding never builds the full-size
image), otherwise right after decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# About a 7700x5200 photo: above any phone's 12-24 MP, below what 1 GB of memory survives (a
# decoded image costs 3 bytes a pixel: 40 MP is 120 MB).
DEFAULT_MAX_PIXELS = 40_000_000
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): they hold the size.
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI, EOI: no length field


class ImageTooLargeError(ValueError):
    """The image's header declares more pixels than allowed: it is refused undecoded."""


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (deterministic shot order)."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def image_header(
    data: bytes | bytearray | memoryview | np.ndarray,
) -> tuple[str, int, int] | None:
    """(format, width, height) declared by the header of an encoded JPEG, PNG, WebP, GIF, BMP or
    TIFF image (format one of those names); None when the bytes are none of these or the header
    is cut short."""
    buf = memoryview(data).cast("B")
    try:
        for magic, fmt, reader in _SIZE_READERS:
            if bytes(buf[: len(magic)]) == magic:
                size = reader(buf)
                return None if size is None else (fmt, *size)
    except (struct.error, IndexError):  # a header cut short
        return None
    return None


def image_size(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) declared by an encoded image's header (see `image_header`), or None."""
    header = image_header(data)
    return None if header is None else (header[1], header[2])


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", buf, pos + 2)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", buf, pos + 5)
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header: not an image
            return None
        pos += 2 + length
    return None


def _png_size(buf: memoryview) -> tuple[int, int] | None:
    if bytes(buf[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", buf, 16)
    return width, height


def _webp_size(buf: memoryview) -> tuple[int, int] | None:
    if bytes(buf[8:12]) != b"WEBP":
        return None
    chunk = bytes(buf[12:16])
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit fields holding size - 1
        w = int.from_bytes(bytes(buf[24:27]), "little") + 1
        h = int.from_bytes(bytes(buf[27:30]), "little") + 1
        return w, h
    if chunk == b"VP8 " and bytes(buf[23:26]) == b"\x9d\x01\x2a":  # lossy: 14-bit sizes
        w, h = struct.unpack_from("<HH", buf, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and buf[20] == 0x2F:  # lossless: two 14-bit fields holding size - 1
        (bits,) = struct.unpack_from("<I", buf, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _gif_size(buf: memoryview) -> tuple[int, int] | None:
    width, height = struct.unpack_from("<HH", buf, 6)
    return width, height


def _bmp_size(buf: memoryview) -> tuple[int, int] | None:
    (header,) = struct.unpack_from("<I", buf, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", buf, 18)
        return width, height
    width, height = struct.unpack_from("<ii", buf, 18)
    return abs(width), abs(height)  # a negative height means top-down rows


def _tiff_size(buf: memoryview) -> tuple[int, int] | None:
    order = "<" if bytes(buf[:2]) == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", buf, 4)
    (count,) = struct.unpack_from(order + "H", buf, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        tag, kind = struct.unpack_from(order + "HH", buf, ifd + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = order + ("H" if kind == 3 else "I")
            (found[tag],) = struct.unpack_from(fmt, buf, ifd + 2 + 12 * i + 8)
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_SIZE_READERS = (
    (b"\xff\xd8", "JPEG", _jpeg_size),
    (b"\x89PNG\r\n\x1a\n", "PNG", _png_size),
    (b"RIFF", "WebP", _webp_size),
    (b"GIF87a", "GIF", _gif_size),
    (b"GIF89a", "GIF", _gif_size),
    (b"BM", "BMP", _bmp_size),
    (b"II*\x00", "TIFF", _tiff_size),
    (b"MM\x00*", "TIFF", _tiff_size),
)


def check_image_size(
    data: bytes | bytearray | memoryview | np.ndarray, what: str, max_pixels: int | None
) -> tuple[int, int]:
    """The declared (width, height) of encoded image bytes; ValueError when the header is not an
    image's, ImageTooLargeError when it declares more than `max_pixels` pixels (None: no limit)."""
    size = image_size(data)
    if size is None or min(size) < 1:
        raise ValueError(f"{what} is not a readable image (empty, truncated or unsupported format)")
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} declares {width}x{height} pixels ({width * height / 1e6:.1f} MP), more than "
            f"the {max_pixels / 1e6:g} MP allowed: it was not decoded; scale it down first (on "
            "the device the limit is [enroll] max_image_pixels)"
        )
    return width, height


def _reduction(size: tuple[int, int], max_side: int | None) -> int:
    """The largest of 8, 4, 2 (else 1) that keeps the longer side at `max_side` or more."""
    if max_side is None:
        return 1
    return next((f for f in (8, 4, 2) if max(size) // f >= max_side), 1)


def decode_image(
    data: bytes | bytearray | memoryview | np.ndarray,
    what: str = "the image",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode encoded image bytes to HxWx3 uint8 BGR, refusing more than `max_pixels` declared
    pixels before decoding; with `max_side`, shrunk so its longer side is at most that."""
    import cv2  # imported here so `import device.images` stays cheap

    from .crop import shrink

    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    size = check_image_size(buf, what, max_pixels)
    # IMREAD_COLOR converts grayscale/RGBA/palette to BGR and 16-bit to 8-bit. Reduced decoding
    # only for JPEG: there libjpeg scales in the DCT (no full-size image, good quality); for other
    # formats OpenCV would decode in full and resize without anti-aliasing, so shrink does it.
    factor = _reduction(size, max_side) if bytes(buf[:2]) == b"\xff\xd8" else 1
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        factor, cv2.IMREAD_REDUCED_COLOR_8
    )
    try:
        image = cv2.imdecode(buf, flag)
    except cv2.error:
        image = None
    if image is None:
        image = _decode_with_pillow(buf)
    if image is None:
        raise ValueError(f"{what} is not a readable image (empty, truncated or unsupported format)")
    if max_side is not None:
        image = shrink(image, max_side)
    return np.ascontiguousarray(image)


def load_image(
    path: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 BGR array (see `decode_image`). Raises ValueError if
    it cannot be read, ImageTooLargeError (a ValueError) if its header declares too many pixels."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    return decode_image(data, str(path), max_pixels=max_pixels, max_side=max_side)


def _decode_with_pillow(buf: np.ndarray) -> np.ndarray | None:
    """Fallback for formats OpenCV lacks (e.g. GIF), when Pillow happens to be installed."""
    try:
        from PIL import Image
    except ImportError:
        return None
    import io

    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                peak = max(float(arr.max()), 1.0)
                scale = 255.0 / (65535.0 if peak > 255 else 255.0)
                gray = np.clip(arr * scale, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)[..., ::-1].copy()
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # Pillow raises many types for bad files; all mean "unreadable"
        return None
    return rgb[..., ::-1].copy()


def load_images(paths: Iterable[str | Path]) -> list[np.ndarray]:
    return [load_image(p) for p in paths]
