"""CosFace / AM-Softmax (Wang et al. 2018): an additive cosine margin, s=64 m=0.35."""

from __future__ import annotations

from typing import Any

from .base import AngularHead, register


def cosface_target(cos: Any, m: float) -> Any:
    """cos(theta) - m."""
    return cos - m


@register
class CosFace(AngularHead):
    name = "cosface"
    default_margin = 0.35

    def check_margin(self, margin: float | None) -> None:
        if margin is not None and not 0.0 <= margin < 2.0:
            raise ValueError(f"CosFace margin must be in [0, 2), got {margin}")

    def target(self, cos: Any, margin: float, **_: Any) -> Any:
        return cosface_target(cos, margin)
