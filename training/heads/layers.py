"""The Keras pieces of the angular heads: `CosineLayer` (normalised class weights, outputs
cos(theta)) and `MarginLoss` (softmax cross-entropy on s * cosines with the label's margin from its
registered head). Registered for Keras serialisation under the names saved models use."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from .base import AngularHead, get_head


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
        head_obj = get_head(head)
        if not isinstance(head_obj, AngularHead):
            raise ValueError(f"the {head} head has no cosine margin")
        self._head = head_obj

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        logits = self._head.logits(
            tf.cast(y_pred, tf.float32),
            labels,
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
