"""Boxes and the padded square crop: the one crop path shared by recognition and enrollment.

Boxes are (x, y, w, h) integer pixel tuples of the full-resolution frame.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def square_box(box: Box, frame_shape: tuple[int, ...], pad: float = 0.03) -> Box:
    """A square around `box`, its side the box's longer side plus `pad` of it on each side,
    shifted (not shrunk) to stay inside the frame when it can, clipped when it cannot."""
    fh, fw = frame_shape[:2]
    x, y, w, h = box
    side = round(max(w, h) * (1.0 + 2.0 * pad))
    side = max(2, min(side, fw, fh))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = round(cx - side / 2.0)
    y0 = round(cy - side / 2.0)
    x0 = min(max(x0, 0), fw - side)
    y0 = min(max(y0, 0), fh - side)
    return (int(x0), int(y0), int(side), int(side))


def crop(frame: np.ndarray, box: Box) -> np.ndarray:
    """The pixels of `box` (a view, clipped to the frame)."""
    x, y, w, h = box
    fh, fw = frame.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(fw, x + w), min(fh, y + h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"crop box {box} lies outside the {fw}x{fh} frame")
    return frame[y0:y1, x0:x1]


def object_crop(frame: np.ndarray, box: Box, pad: float = 0.03) -> tuple[np.ndarray, Box]:
    """The padded square crop of an object box, at full resolution, and the crop's box."""
    sq = square_box(box, frame.shape, pad)
    return crop(frame, sq), sq


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` scaled down (never up) so its longer side is at most `max_side`."""
    import cv2

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
