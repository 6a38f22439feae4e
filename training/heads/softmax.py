"""A plain Dense classifier on the embedding with softmax cross-entropy (the baseline)."""

from __future__ import annotations

from typing import Any

from .base import Head, register


@register
class Softmax(Head):
    name = "softmax"

    def layer(self, num_classes: int) -> Any:
        import keras

        return keras.layers.Dense(num_classes, name="head")

    def loss(self, scale: float | None, margin: float | None, **options: Any) -> Any:
        import keras

        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="softmax_loss")
