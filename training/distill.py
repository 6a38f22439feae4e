"""Feature distillation towards the starting backbone while fine-tuning (`fit --distill W`).

Fine-tuning on a small catalogue moves the backbone's pooled features far from where they started
(docs/BENCHMARKS.md, "Product domains", measures how far), and with them the generality a shop's
unseen products need. `--distill W` adds to the head's loss

    W * mean over the batch of || s/|s| - t/|t| ||^2          (= W * mean(2 - 2 cos(s, t)))

where s is the pooled backbone feature being trained and t the same image's pooled feature from a
frozen copy of the backbone as it was before training (ImageNet's, with `--weights imagenet`): a
pull towards the starting features, learning-without-forgetting at the feature level. The frozen
copy lives only in the training graph: the extractor written to the run is unchanged in shape.

The term is part of `loss` and `val_loss` (so of the best-epoch choice: the objective trained is
the one monitored); the distance alone is logged as `distill_distance` / `val_distill_distance`
(history.csv), to see how far the features moved.
"""

from __future__ import annotations

from typing import Any

import keras

from .model import POOL_NAME, SCALING_NAME, get_backbone, l2_normalize

TEACHER_NAME = "distill_teacher"


def unit_sq_distance(student: Any, teacher: Any, epsilon: float = 1e-12) -> Any:
    """Per-row || s/|s| - t/|t| ||^2 (keras ops: runs in the training graph)."""
    diff = l2_normalize(student, epsilon) - l2_normalize(teacher, epsilon)
    return keras.ops.sum(keras.ops.square(diff), axis=-1)


class FeatureDistillation(keras.layers.Layer):
    """[logits, student features, teacher features] -> logits, adding the weighted mean distance
    to the model's losses (Keras adds a layer's `add_loss` terms to the compiled loss)."""

    def __init__(self, weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not weight > 0:
            raise ValueError(f"--distill weight must be > 0, got {weight}")
        self.weight = float(weight)
        # A layer's metrics reach fit's logs (and history.csv) beside the loss.
        self.distance = keras.metrics.Mean(name="distill_distance")

    def call(self, inputs: Any) -> Any:
        logits, student, teacher = inputs
        distance = keras.ops.mean(unit_sq_distance(student, keras.ops.stop_gradient(teacher)))
        self.distance.update_state(distance)
        self.add_loss(self.weight * distance)
        return logits

    def compute_output_shape(self, input_shapes: Any) -> Any:
        return input_shapes[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


def frozen_teacher(extractor: keras.Model) -> keras.Model:
    """A frozen copy of the extractor's backbone with its current (starting) weights."""
    backbone = get_backbone(extractor)
    teacher = keras.models.clone_model(backbone)
    teacher.set_weights(backbone.get_weights())
    teacher.name = TEACHER_NAME
    teacher.trainable = False
    return teacher


def build_distill_trainer(model: keras.Model, extractor: keras.Model, weight: float) -> keras.Model:
    """The model `fit` trains with --distill: `model`'s layers (extractor and head, shared, so
    training it trains them) plus the frozen teacher and the distillation term. Call it before any
    training: the teacher copies the backbone's weights as they are now."""
    teacher = frozen_teacher(extractor)
    # The teacher sees the student's own scaled input, so the two never disagree on it.
    taps = keras.Model(
        extractor.inputs,
        [
            extractor.outputs[0],
            extractor.get_layer(POOL_NAME).output,
            extractor.get_layer(SCALING_NAME).output,
        ],
        name="extractor_taps",
    )
    inputs = keras.Input(shape=extractor.input_shape[1:], dtype="float32", name="image")
    emb, pooled, scaled = taps(inputs)
    head = model.get_layer("head")  # every head's layer has this name (training/heads/)
    # The teacher's BN layers use their moving (ImageNet) statistics because the teacher is not
    # trainable: in Keras 3 an outer training=True would override training=False written here.
    t = teacher(scaled)
    t = keras.layers.GlobalAveragePooling2D(name="teacher_pool")(t)
    out = FeatureDistillation(weight, name="feature_distillation")([head(emb), pooled, t])
    return keras.Model(inputs, out, name=f"{model.name}_distill")
