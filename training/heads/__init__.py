"""Classification heads and their losses, one file each, registered by name (see base.py).

Margin heads (arcface, cosface, sphereface, normface) are a `CosineLayer`: normalised class weights,
output cos(theta) of shape (N, C). The margin is applied in `MarginLoss` from the label, so the
training model has a single image input; accuracy metrics read the plain cosines (argmax is the same
as for the margin-free logits). `softmax` is a plain Dense classifier on the embedding.

Importing this package loads no TensorFlow; `CosineLayer` and `MarginLoss` (Keras) are loaded when
first asked for.
"""

from __future__ import annotations

from typing import Any

# Each module registers its head; the import order is the order of `head_names()`.
from . import arcface  # noqa: F401

# isort: split
from . import cosface  # noqa: F401

# isort: split
from . import sphereface  # noqa: F401

# isort: split
from . import normface  # noqa: F401

# isort: split
from . import softmax  # noqa: F401

# isort: split
from .base import AngularHead, Head, get_head, head_names, register

__all__ = [
    "AngularHead",
    "CosineLayer",
    "Head",
    "MarginLoss",
    "get_head",
    "head_names",
    "make_head",
    "make_loss",
    "register",
]


def make_head(head: str, num_classes: int) -> Any:
    """The Keras layer of the head named `head`."""
    return get_head(head).layer(num_classes)


def make_loss(
    head: str,
    scale: float | None,
    margin: float | None,
    *,
    easy_margin: bool = False,
    sphereface_lambda: float = 5.0,
) -> Any:
    """The Keras loss of the head named `head`."""
    return get_head(head).loss(
        scale, margin, easy_margin=easy_margin, sphereface_lambda=sphereface_lambda
    )


def __getattr__(name: str) -> Any:
    if name in ("CosineLayer", "MarginLoss"):
        from . import layers

        return getattr(layers, name)
    raise AttributeError(name)
