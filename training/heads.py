"""Classification heads and their losses.

Margin heads (arcface, cosface, sphereface, normface) are a `CosineLayer`: normalised class weights,
output cos(theta) of shape (N, C). The margin is applied in `MarginLoss` from the label, so the
training model has a single image input; accuracy metrics read the plain cosines (argmax is the same
as for the margin-free logits). `softmax` is a plain Dense classifier on the embedding.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from .margins import margin_logits


@keras.saving.register_keras_serializable(package="prodrec")
class CosineLayer(keras.layers.Layer):
    """cos(theta) between the (already normalised) embedding and L2-normalised class weights."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.kernel = self.add_weight(
            name="class_centers",
            shape=(int(input_shape[-1]), self.num_classes),
            initializer=keras.initializers.GlorotUniform(),
            trainable=True,
        )

    def call(self, inputs: Any) -> Any:
        x = keras.ops.normalize(inputs, axis=-1)
        w = keras.ops.normalize(self.kernel, axis=0)
        return keras.ops.clip(keras.ops.matmul(x, w), -1.0, 1.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="prodrec")
class MarginLoss(keras.losses.Loss):
    """Softmax cross-entropy on s * cosines, the label's cosine replaced by its margin target."""

    def __init__(
        self,
        head: str = "arcface",
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        sphereface_lambda: float = 5.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name or f"{head}_loss", **kwargs)
        self.head = head
        self.scale = float(scale)
        self.margin = float(margin)
        self.easy_margin = bool(easy_margin)
        self.sphereface_lambda = float(sphereface_lambda)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        logits = margin_logits(
            tf.cast(y_pred, tf.float32),
            labels,
            self.head,
            self.scale,
            self.margin,
            easy_margin=self.easy_margin,
            sphereface_lambda=self.sphereface_lambda,
        )
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "head": self.head,
            "scale": self.scale,
            "margin": self.margin,
            "easy_margin": self.easy_margin,
            "sphereface_lambda": self.sphereface_lambda,
        }


def make_head(head: str, num_classes: int) -> keras.layers.Layer:
    if head == "softmax":
        return keras.layers.Dense(num_classes, name="head")
    return CosineLayer(num_classes, name="head")


def make_loss(
    head: str,
    scale: float | None,
    margin: float | None,
    *,
    easy_margin: bool = False,
    sphereface_lambda: float = 5.0,
) -> keras.losses.Loss:
    if head == "softmax":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, name="softmax_loss")
    assert scale is not None
    return MarginLoss(
        head,
        scale,
        margin or 0.0,
        easy_margin=easy_margin,
        sphereface_lambda=sphereface_lambda,
    )
