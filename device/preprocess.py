"""Crop -> model input, exactly as the bundle's `model.json` describes (see device.bundle).

The one implementation of the device's preprocessing: the device, `convert` (calibration data and
parity) and `training evaluate` (TFLite and Keras alike) all call `prepare`, so the figures they
report describe what the device does."""

from __future__ import annotations

import numpy as np

from .bundle import InputSpec


def resize_rgb(image_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """BGR uint8 crop -> HxWx3 uint8 in the model's colour order and size."""
    import cv2

    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
    if image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image_bgr.dtype}")
    if image_bgr.shape[0] < 2 or image_bgr.shape[1] < 2:
        raise ValueError(f"image too small to embed: {image_bgr.shape[1]}x{image_bgr.shape[0]} px")
    h, w = image_bgr.shape[:2]
    if (h, w) == (spec.height, spec.width):
        image = np.ascontiguousarray(image_bgr)
    else:
        # "area" anti-aliases a shrink by 2x or more with INTER_AREA. Below 2x it uses INTER_LINEAR:
        # there the two differ by ~1 grey level on average (less than int8 noise) while OpenCV's
        # INTER_AREA at non-integer ratios costs 5-8x more, a visible share of one inference.
        strong_shrink = h >= 2 * spec.height or w >= 2 * spec.width
        interp = cv2.INTER_AREA if (spec.resize == "area" and strong_shrink) else cv2.INTER_LINEAR
        image = cv2.resize(image_bgr, (spec.width, spec.height), interpolation=interp)
    # Resizing works on each channel alike, so swapping the channels after it gives the same
    # pixels as before it, on far fewer of them.
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if spec.color_order == "RGB" else image


def to_input_tensor(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWx3 (or NxHxWx3) uint8 pixels -> the model's input dtype, with a batch axis."""
    if pixels.ndim == 3:
        pixels = pixels[None]
    norm = spec.normalization
    identity = norm.scale == 1.0 and norm.offset == 0.0
    if spec.dtype == "float32":
        x = pixels.astype(np.float32)
        return x if identity else x * np.float32(norm.scale) + np.float32(norm.offset)
    q = spec.quantization
    assert q is not None  # guaranteed by bundle validation
    if identity and q.scale == 1.0 and q.zero_point == 0 and spec.dtype == "uint8":
        return np.ascontiguousarray(pixels, dtype=np.uint8)  # raw pixels: the common int8 bundle
    x = pixels.astype(np.float32) * np.float32(norm.scale) + np.float32(norm.offset)
    info = np.iinfo(np.uint8 if spec.dtype == "uint8" else np.int8)
    qv = np.round(x / np.float32(q.scale) + q.zero_point)
    return np.clip(qv, info.min, info.max).astype(spec.dtype)


def prepare(image_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """BGR uint8 crop -> a (1, H, W, 3) tensor ready for the interpreter."""
    return to_input_tensor(resize_rgb(image_bgr, spec), spec)
