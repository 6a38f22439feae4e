"""Checking uploaded photos before anything decodes them (plain Python + OpenCV).

A photo is refused when it is larger than [web] max_upload_bytes, when its header does not name
a format the device reads (JPEG, PNG, WebP, GIF, BMP), or when its header's width x height is
above [web] max_upload_pixels: a small file can declare a huge image ("decompression bomb"),
so the pixel count is read from the header, without decoding. What passes is decoded like
`enroll --from-images` decodes files (`device.images.decode_image`).
"""

from __future__ import annotations

import struct

import numpy as np

from ..images import decode_image

FORMATS = "JPEG, PNG, WebP, GIF or BMP"


class UploadError(ValueError):
    """An uploaded file the device refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the file's header, or None if it is not a known format."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "PNG", w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return "GIF", w, h
        if data[:2] == b"BM":
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return "BMP", abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:  # truncated header
        return None
    return None


def _webp_size(data: bytes) -> tuple[str, int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return "WebP", w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return "WebP", w & 0x3FFF, h & 0x3FFF
    return None


# Start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are not frames.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[str, int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return "JPEG", w, h
        i += 2 + length
    return None


def check_photo(data: bytes, name: str, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """The photo decoded to BGR uint8, or UploadError saying why it is refused."""
    if len(data) > max_bytes:
        raise UploadError(
            f"{name}: {len(data):,} bytes is more than the limit of {max_bytes:,} "
            "([web] max_upload_bytes)",
            413,
        )
    if not data:
        raise UploadError(f"{name}: the file is empty")
    size = image_size(data)
    if size is None:
        raise UploadError(f"{name}: not an image the device reads ({FORMATS})", 415)
    fmt, w, h = size
    if w < 1 or h < 1:
        raise UploadError(f"{name}: the {fmt} header gives no image size")
    if w * h > max_pixels:
        raise UploadError(
            f"{name}: {w}x{h} pixels ({w * h:,}) is more than the limit of {max_pixels:,} "
            "([web] max_upload_pixels): send a smaller photo",
            413,
        )
    try:
        image = decode_image(data, name)
    except ValueError as exc:
        raise UploadError(str(exc)) from exc
    if image.shape[0] * image.shape[1] > max_pixels:  # pragma: no cover - headers cannot lie to us
        raise UploadError(f"{name}: more pixels than [web] max_upload_pixels", 413)
    return image
