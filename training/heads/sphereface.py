"""SphereFace (Liu et al. 2017): a multiplicative angular margin, integer m=4. Features are
normalised here, so a scale is needed: 64 like the other angular heads."""

from __future__ import annotations

import math
from typing import Any

from .base import AngularHead, clipped, register


def sphereface_psi(cos: Any, m: int) -> Any:
    """psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]: SphereFace's
    monotonically decreasing extension of cos(m theta) to [0, pi]."""
    import tensorflow as tf

    theta = tf.acos(clipped(cos))
    k = tf.floor(m * theta / math.pi)
    k = tf.minimum(k, float(m - 1))  # theta == pi exactly belongs to the last interval
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(m * theta) - 2.0 * k


def sphereface_target(cos: Any, m: int, lam: float = 5.0) -> Any:
    """(lam * cos + psi) / (1 + lam): SphereFace's target with its softening weight lambda (the
    paper anneals lambda from 1000 down to 5; the fixed final value is used here). lam=0 is the
    pure psi."""
    psi = sphereface_psi(cos, int(m))
    return (lam * cos + psi) / (1.0 + lam)


@register
class SphereFace(AngularHead):
    name = "sphereface"
    default_margin = 4.0

    def check_margin(self, margin: float | None) -> None:
        if margin is None or margin < 1 or float(margin) != int(margin):
            raise ValueError(
                f"SphereFace margin is an integer >= 1 (the paper uses 4), got {margin}"
            )

    def target(self, cos: Any, margin: float, *, sphereface_lambda: float = 5.0, **_: Any) -> Any:
        return sphereface_target(cos, int(margin), sphereface_lambda)
