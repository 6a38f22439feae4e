"""NormFace (Wang et al. 2017): normalised softmax, no margin, a fixed scale of 30 (the value
AM-Softmax/CosFace re-implementations use for normalised softmax)."""

from __future__ import annotations

from typing import Any

from .base import AngularHead, register


@register
class NormFace(AngularHead):
    name = "normface"
    default_scale = 30.0
    default_margin = 0.0

    def target(self, cos: Any, margin: float, **_: Any) -> Any:
        return cos
