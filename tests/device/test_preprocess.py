"""The device's preprocessing against a direct reference (colour order first, then resize)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from device.bundle import InputSpec
from device.preprocess import resize_rgb


def spec(color_order: str, resize: str) -> InputSpec:
    return InputSpec(height=96, width=96, color_order=color_order, resize=resize)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
@pytest.mark.parametrize("resize", ["area", "linear"])
@pytest.mark.parametrize("shape", [(96, 96), (140, 120), (200, 300), (50, 70)])
def test_resize_rgb_equals_convert_then_resize(color_order: str, resize: str, shape) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color_order == "RGB" else image
    if shape != (96, 96):
        strong = shape[0] >= 192 or shape[1] >= 192
        interp = cv2.INTER_AREA if (resize == "area" and strong) else cv2.INTER_LINEAR
        ref = cv2.resize(ref, (96, 96), interpolation=interp)
    out = resize_rgb(image, spec(color_order, resize))
    assert out.shape == (96, 96, 3) and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, ref)
