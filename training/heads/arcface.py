"""ArcFace (Deng et al. 2019): the target angle plus an additive angular margin, s=64 m=0.5."""

from __future__ import annotations

import math
from typing import Any

from .base import AngularHead, clipped, register


def arcface_target(cos: Any, m: float, easy_margin: bool = False) -> Any:
    """cos(theta + m). cos(theta + m) stops decreasing once theta + m > pi, so, as in insightface,
    the target falls back to cos(theta) - m*sin(m) there (theta > pi - m), which keeps the logit
    monotonic in theta. With `easy_margin`, the margin is only applied where cos(theta) > 0."""
    import tensorflow as tf

    cos = clipped(cos)
    sin = tf.sqrt(1.0 - tf.square(cos))
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return tf.where(cos > 0.0, phi, cos)
    th = math.cos(math.pi - m)
    mm = math.sin(math.pi - m) * m
    return tf.where(cos > th, phi, cos - mm)


@register
class ArcFace(AngularHead):
    name = "arcface"
    default_margin = 0.5

    def check_margin(self, margin: float | None) -> None:
        if margin is not None and not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFace margin is an angle in radians in [0, pi/2), got {margin}")

    def target(self, cos: Any, margin: float, *, easy_margin: bool = False, **_: Any) -> Any:
        return arcface_target(cos, margin, easy_margin)
