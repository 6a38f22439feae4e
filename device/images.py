"""Reading images from files the way the device sees frames: 8-bit, 3-channel, BGR (OpenCV's order).

Grayscale, RGBA, palette and 16-bit files are converted, not rejected. Used by the device (enroll from
photos), by training (so decoding is identical on both sides) and by convert (calibration images)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (deterministic shot order)."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 BGR array. Raises ValueError if it cannot be read."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    return decode_image(data.tobytes(), str(path))


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode an image file's bytes (as `load_image` does; the web page's uploads) to HxWx3 uint8
    BGR. Raises ValueError naming `name` if they are not a readable image."""
    import cv2  # imported here so `import device.images` stays cheap

    image = None
    if data:
        # IMREAD_COLOR converts grayscale/RGBA/palette to BGR and 16-bit to 8-bit.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        image = _load_with_pillow(data)
    if image is None:
        raise ValueError(f"{name} is not a readable image (empty, truncated or unsupported format)")
    return np.ascontiguousarray(image)


def _load_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for formats OpenCV lacks (e.g. GIF), when Pillow happens to be installed."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
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
