"""The extractor (MobileNetV2 -> pooled -> dropout -> dense -> batch norm -> L2) and the training
model (extractor + head).

The extractor takes raw RGB pixels 0..255 (float32) and normalises inside (x/127.5 - 1), so the
device feeds the resized crop as is. Its backbone is a nested model named "backbone": the fine-tuning
schedule unfreezes its top blocks. With pretrained weights the backbone is called in inference mode
(`training=False`) and its BatchNormalization layers stay frozen: their ImageNet statistics are kept
while fine-tuning on a few thousand images (the standard Keras transfer-learning advice). Without
pretrained weights BN trains on batch statistics, and `fit` re-estimates the moving statistics after
training (`recalibrate_batchnorm`): a short run leaves them far from the features' real ones.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .config import imagenet_weight_size, is_pretrained, validate_backbone
from .heads import layers as _head_layers  # noqa: F401 - registers them for loading saved models
from .heads import make_head

log = logging.getLogger(__name__)

EXTRACTOR_NAME = "extractor"
BACKBONE_NAME = "backbone"
POOL_NAME = "pool"  # the pooled backbone features (`training generalise` keeps them)
SCALING_NAME = "mobilenet_scaling"  # x/127.5 - 1, the backbone's input
N_BACKBONE_UNITS = 19  # stem, expanded_conv, block_1..block_16, final Conv_1


def l2_normalize(x: Any, epsilon: float) -> Any:
    """x / max(||x||, sqrt(epsilon)) along the last axis, in keras ops (runs inside a graph)."""
    ops = keras.ops
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), epsilon))


@keras.saving.register_keras_serializable(package="prodrec")
class L2Normalize(keras.layers.Layer):
    """x / max(||x||, eps) along the last axis (plain ops: converts to TFLite, reloads by name)."""

    def __init__(self, epsilon: float = 1e-30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs: Any) -> Any:
        return l2_normalize(inputs, self.epsilon)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _imagenet_file(alpha: float, input_size: int) -> str | None:
    """The cached ImageNet weights file when the Keras cache holds it as a pointer file (a small
    text file naming the real file beside it, as an offline cache may, e.g. /work/shared/keras),
    which Keras itself cannot read. None lets Keras find or download the file as usual."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{input_size}_no_top.h5"
    path = home / "models" / name
    try:
        if not path.is_file() or path.stat().st_size > 4096:
            return None
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head.startswith(_HDF5_SIGNATURE):
        return None
    target = path.parent / head.decode("utf-8", "replace").strip()
    if target.name and target.is_file():
        with target.open("rb") as fh:
            if fh.read(8) == _HDF5_SIGNATURE:
                log.info("ImageNet weights: %s (named by %s)", target, path.name)
                return str(target)
    return None


def _backbone_weights(weights: str | None, alpha: float, input_size: int) -> str | None:
    if not is_pretrained(weights):
        return None
    if weights == "imagenet":
        size = imagenet_weight_size(input_size)
        if size != input_size:
            log.info("no ImageNet weights at %d px: starting from the %d px ones", input_size, size)
        return _imagenet_file(alpha, size) or "imagenet"
    path = Path(str(weights))
    if not path.is_file():
        raise ValueError(
            f"--weights {weights}: no such file (use imagenet, none, a MobileNetV2 .h5 weights file, "
            "or a RUN_DIR / extractor.keras to start from)"
        )
    if path.suffix == ".keras":
        return None  # a whole extractor: loaded after building (see build_extractor)
    return str(path)


def build_extractor(
    *,
    input_size: int = 160,
    alpha: float = 1.0,
    embedding_dim: int = 128,
    weights: str | None = "imagenet",
    dropout: float = 0.2,
) -> keras.Model:
    """One input float32 (None, H, W, 3) raw RGB 0..255 -> one output (None, D) unit embedding."""
    if weights is not None and str(weights).lower() == "none":
        weights = None
    if weights is not None and weights != "imagenet" and Path(weights).is_dir():
        weights = str(Path(weights) / "extractor.keras")
    validate_backbone(input_size, alpha, weights)
    shape = (input_size, input_size, 3)
    try:
        backbone = keras.applications.MobileNetV2(
            input_shape=shape,
            alpha=alpha,
            include_top=False,
            weights=_backbone_weights(weights, alpha, input_size),
            name=BACKBONE_NAME,
        )
    except Exception as exc:  # download failures surface as many types
        if weights == "imagenet":
            raise ValueError(
                f"could not load MobileNetV2 ImageNet weights (alpha {alpha}, {input_size} px): {exc}. "
                "Without internet, point KERAS_HOME at a Keras cache holding them "
                "(KERAS_HOME=DIR with models/mobilenet_v2_weights_*.h5 in it), or use --weights none"
            ) from exc
        if weights is not None:  # a weights file that Keras cannot read
            raise ValueError(
                f"cannot load --weights {weights} ({exc}): give a MobileNetV2 .h5 weights file "
                "for this alpha, a RUN_DIR / extractor.keras, imagenet or none"
            ) from exc
        raise
    pretrained = is_pretrained(weights)
    inputs = keras.Input(shape=shape, dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=SCALING_NAME)(inputs)
    # Pretrained: BN in inference mode so ImageNet statistics survive fine-tuning on small data.
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(embedding_dim, use_bias=False, name="embedding")(x)
    x = keras.layers.BatchNormalization(name="embedding_bn")(x)
    outputs = L2Normalize(name="l2_normalize")(x)
    model = keras.Model(inputs, outputs, name=EXTRACTOR_NAME)
    if weights is not None and str(weights).endswith(".keras"):
        src = load_extractor(weights)
        try:
            model.set_weights(src.get_weights())
        except ValueError as exc:
            raise ValueError(
                f"--weights {weights}: its architecture differs from alpha {alpha}, "
                f"{input_size} px, embedding {embedding_dim}: {exc}"
            ) from exc
    return model


def build_training_model(extractor: keras.Model, head: str, num_classes: int) -> keras.Model:
    """Image -> extractor -> head (cosines, or logits for softmax). One input; no label input."""
    inputs = keras.Input(shape=extractor.input_shape[1:], dtype="float32", name="image")
    emb = extractor(inputs)
    out = make_head(head, num_classes)(emb)
    return keras.Model(inputs, out, name=f"{head}_trainer")


def get_backbone(extractor: keras.Model) -> keras.Model:
    return extractor.get_layer(BACKBONE_NAME)


def _unit_of(layer_name: str) -> int:
    """MobileNetV2 layer -> its block index, 0 (stem) .. 18 (final 1x1 conv)."""
    if layer_name.startswith("block_"):
        return int(re.match(r"block_(\d+)_", layer_name).group(1)) + 1  # type: ignore[union-attr]
    if layer_name.startswith("expanded_conv"):
        return 1
    if layer_name.startswith(("Conv_1", "out_relu")):
        return N_BACKBONE_UNITS - 1
    return 0  # input, Conv1, bn_Conv1, Conv1_relu


def set_backbone_trainable(extractor: keras.Model, fraction: float, freeze_bn: bool = True) -> int:
    """Unfreeze the top `fraction` of the backbone's blocks (0 freezes it all). BatchNormalization
    layers stay frozen when `freeze_bn`. Returns the number of trainable backbone weights."""
    backbone = get_backbone(extractor)
    if fraction <= 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    cutoff = N_BACKBONE_UNITS - math.ceil(fraction * N_BACKBONE_UNITS)
    for layer in backbone.layers:
        train = _unit_of(layer.name) >= cutoff
        if freeze_bn and isinstance(layer, keras.layers.BatchNormalization):
            train = False
        layer.trainable = train
    return sum(int(math.prod(w.shape)) for w in backbone.trainable_weights)


def batchnorm_layers(extractor: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of the extractor: the backbone's and `embedding_bn`."""
    found: list[keras.layers.BatchNormalization] = []

    def walk(layer: keras.layers.Layer) -> None:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for sub in getattr(layer, "layers", ()):
            walk(sub)

    for layer in extractor.layers:
        walk(layer)
    return found


def recalibrate_batchnorm(
    extractor: keras.Model,
    images: np.ndarray,
    batch_size: int,
    *,
    prepare: Callable[[np.ndarray], Any] | None = None,
) -> dict[str, Any]:
    """Re-estimate every BatchNormalization layer's moving mean and variance as the average, over
    `images` (N, H, W, 3), of the batch statistics the layer computes in training mode.

    Why: a backbone trained from scratch uses batch statistics while it trains, but its moving
    statistics (momentum 0.99) hardly move in a short run, so in inference mode every image gets
    nearly the same embedding. Only the moving statistics change; dropout is off for the pass.
    `prepare` maps a uint8 batch to the model's input (e.g. a resize). Returns what was done."""
    started = time.monotonic()
    norms = batchnorm_layers(extractor)
    dropouts = [layer for layer in extractor.layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum, layer.trainable) for layer in norms]
    rates = [(layer, layer.rate) for layer in dropouts]
    n, seen, batches = len(images), 0, 0
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for layer in norms:
            layer.trainable = True  # Keras runs a non-trainable BN layer in inference mode
        for start in range(0, n, max(1, batch_size)):
            batch = images[start : start + batch_size]
            # Cumulative average: moving = moving * seen/(seen+b) + batch_stat * b/(seen+b).
            momentum = seen / (seen + len(batch))
            for layer in norms:
                layer.momentum = momentum
            x = prepare(batch) if prepare is not None else batch.astype(np.float32)
            extractor(x, training=True)
            seen += len(batch)
            batches += 1
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum = momentum
            layer.trainable = trainable
        for layer, rate in rates:
            layer.rate = rate
    return {
        "layers": len(norms),
        "images": seen,
        "batch_size": batch_size,
        "batches": batches,
        "method": "average of training-mode batch statistics, un-augmented images, no dropout",
        "time_s": round(time.monotonic() - started, 2),
    }


def load_extractor(path: str | Path) -> keras.Model:
    """Load `extractor.keras` (a file or the RUN_DIR holding it), custom layers registered."""
    path = Path(path)
    if path.is_dir():
        path = path / "extractor.keras"
    if not path.is_file():
        raise ValueError(f"no extractor at {path}: give a RUN_DIR written by `training fit`")
    return keras.saving.load_model(path, compile=False)
