"""Checking uploaded photos before anything decodes them (plain Python + OpenCV).

A photo is refused when it is larger than [web] max_upload_bytes, when its header does not name
a format the device reads (JPEG, PNG, WebP, GIF, BMP), or when its header's width x height is
above [web] max_upload_pixels: a small file can declare a huge image ("decompression bomb"),
so the pixel count is read from the header, without decoding. What passes is decoded like
`enroll --from-images` decodes files (`device.images.decode_image`).
"""

from __future__ import annotations

import numpy as np

from ..images import decode_image, image_header

FORMATS = "JPEG, PNG, WebP, GIF or BMP"
_TAKEN = frozenset({"JPEG", "PNG", "WebP", "GIF", "BMP"})


class UploadError(ValueError):
    """An uploaded file the device refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from the file's header (`device.images.image_header`, no
    decoding), or None if it is not a format the page takes (FORMATS)."""
    header = image_header(data)
    return header if header is not None and header[0] in _TAKEN else None


def check_photo(
    data: bytes, name: str, *, max_bytes: int, max_pixels: int, max_side: int | None = None
) -> np.ndarray:
    """The photo decoded to BGR uint8, or UploadError saying why it is refused. With `max_side`
    (`device.enroll.photo_side`) it is reduced while decoded, as `enroll --from-images` does, so
    a form of many large photos holds only small images."""
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
        image = decode_image(data, name, max_pixels=max_pixels, max_side=max_side)
    except ValueError as exc:
        raise UploadError(str(exc)) from exc
    if image.shape[0] * image.shape[1] > max_pixels:  # pragma: no cover - headers cannot lie to us
        raise UploadError(f"{name}: more pixels than [web] max_upload_pixels", 413)
    return image
