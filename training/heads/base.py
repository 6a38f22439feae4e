"""The base classes of the classification heads and their registry.

A head is registered by name (`@register`) and chosen from `FitConfig.head`; nothing else switches
on the name. Angular heads share the margin math of `AngularHead.logits`, as pytorch-metric-learning
does: each subclass only says how the TARGET-class cosine is modified (`target`); the base puts it
at the label's column and scales. The margin is applied in the loss from the label, so the training
model has a single image input.

TensorFlow/Keras are imported inside the methods: `training.config` reads the registry (names,
defaults, margin checks) without loading them.
"""

from __future__ import annotations

from typing import Any, ClassVar

_EPS = 1e-7  # cosines are kept inside (-1, 1) before acos/sqrt

_REGISTRY: dict[str, type[Head]] = {}


def register(cls: type[Head]) -> type[Head]:
    """Class decorator: make the head choosable by its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"a head named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def head_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_head(name: str) -> Head:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(_REGISTRY)}") from None


class Head:
    """A classifier on the embedding and its loss."""

    name: ClassVar[str]
    # (scale s, margin m) as published; None where the head has none.
    default_scale: ClassVar[float | None] = None
    default_margin: ClassVar[float | None] = None

    def check_margin(self, margin: float | None) -> None:
        """ValueError when `margin` is outside what this head accepts."""

    def layer(self, num_classes: int) -> Any:
        """The Keras layer from the embedding to this head's outputs."""
        raise NotImplementedError

    def loss(self, scale: float | None, margin: float | None, **options: Any) -> Any:
        """The Keras loss on this head's outputs and the integer labels."""
        raise NotImplementedError


class AngularHead(Head):
    """Normalised class weights (outputs cos(theta), shape (N, C)) and a margin at the label."""

    default_scale = 64.0

    def target(self, cos: Any, margin: float, **options: Any) -> Any:
        """The TARGET-class cosine with this head's margin (a tf.Tensor like `cos`)."""
        raise NotImplementedError

    def logits(self, cos: Any, labels: Any, scale: float, margin: float, **options: Any) -> Any:
        """s * (cos with the label's column replaced by its margin target). labels: (N,) ints."""
        import tensorflow as tf

        cos = tf.convert_to_tensor(cos, tf.float32)
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        onehot = tf.one_hot(labels, tf.shape(cos)[-1], dtype=tf.float32) > 0.5
        return scale * tf.where(onehot, self.target(cos, margin, **options), cos)

    def layer(self, num_classes: int) -> Any:
        from .layers import CosineLayer

        return CosineLayer(num_classes, name="head")

    def loss(self, scale: float | None, margin: float | None, **options: Any) -> Any:
        from .layers import MarginLoss

        if scale is None:
            raise ValueError(f"the {self.name} head needs a scale")
        return MarginLoss(self.name, scale, margin or 0.0, **options)


def clipped(cos: Any) -> Any:
    """`cos` kept inside (-1, 1), where acos and sqrt(1 - cos^2) have finite gradients."""
    import tensorflow as tf

    return tf.clip_by_value(cos, -1.0 + _EPS, 1.0 - _EPS)
