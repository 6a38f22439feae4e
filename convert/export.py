"""Keras extractor -> SavedModel with a fixed (1, H, W, 3) float32 signature.

On Keras 3, `TFLiteConverter.from_keras_model` breaks on some models; exporting a SavedModel and
converting that is the path that works. Batch 1 because the device embeds one crop at a time."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from device.bundle import InputSpec

log = logging.getLogger(__name__)


def export_saved_model(model: Any, out_dir: str | Path, spec: InputSpec) -> Path:
    import tensorflow as tf

    out_dir = Path(out_dir)
    start = time.perf_counter()
    signature = [
        tf.TensorSpec([1, spec.height, spec.width, spec.channels], tf.float32, name="image")
    ]
    model.export(str(out_dir), format="tf_saved_model", verbose=False, input_signature=signature)
    log.info("exported SavedModel in %.1f s", time.perf_counter() - start)
    return out_dir
