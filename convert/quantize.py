"""SavedModel -> TFLite flatbuffer in one of four modes, and what the result actually expects.

- int8: full-integer ops, uint8 image input, float32 embedding output. The extractor takes raw
  0..255 pixels, so calibration normally gives the input scale 1.0 / zero point 0 and the device
  feeds the resized crop's bytes as they are. Whatever the converter picked is read back from the
  model and recorded in model.json.
- float16: float16 weights, float32 input/output.
- dynamic: int8 weights, float activations (dynamic-range quantisation), float32 input/output.
- float32: no quantisation (the reference).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import InputSpec, Normalization, OutputSpec, Quantization

log = logging.getLogger(__name__)

QUANT_MODES = ("int8", "float16", "dynamic", "float32")


def convert_saved_model(
    saved_model_dir: str | Path,
    quant: str,
    representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
) -> bytes:
    import tensorflow as tf

    if quant not in QUANT_MODES:
        raise ValueError(f"--quant {quant!r}: expected one of {list(QUANT_MODES)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quant == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs calibration images (--calibration DIR)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    elif quant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    start = time.perf_counter()
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain Exceptions
        raise RuntimeError(f"TFLite conversion ({quant}) failed: {exc}") from exc
    log.info(
        "converted (%s) in %.1f s: %d bytes", quant, time.perf_counter() - start, len(flatbuffer)
    )
    return bytes(flatbuffer)


def _quant(detail: dict[str, Any]) -> Quantization | None:
    scale, zero_point = detail["quantization"]
    return Quantization(float(scale), int(zero_point)) if scale else None


def read_io_specs(
    model_path: str | Path, float_spec: InputSpec, interpreter: Any | None = None
) -> tuple[InputSpec, OutputSpec]:
    """The bundle's input/output specs, read from the converted model itself."""
    if interpreter is None:
        from device.runtime import load_interpreter

        interpreter = load_interpreter(model_path, num_threads=1)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise RuntimeError(
            f"converted model has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1"
        )
    inp, out = inputs[0], outputs[0]
    shape = tuple(int(v) for v in inp["shape"])
    if shape != float_spec.shape:
        raise RuntimeError(
            f"converted model takes {list(shape)}, expected {list(float_spec.shape)}"
        )
    in_dtype = np.dtype(inp["dtype"]).name
    in_quant = _quant(inp) if in_dtype != "float32" else None
    if in_quant is not None and (in_quant.scale, in_quant.zero_point) != (1.0, 0):
        log.warning(
            "the converter quantised the input with scale %s, zero point %s (not raw pixels); "
            "recorded in model.json, the device quantises accordingly",
            in_quant.scale,
            in_quant.zero_point,
        )
    out_shape = tuple(int(v) for v in out["shape"])
    if len(out_shape) != 2 or out_shape[0] != 1:
        raise RuntimeError(f"converted model outputs shape {list(out_shape)}, expected [1, D]")
    out_dtype = np.dtype(out["dtype"]).name
    input_spec = InputSpec(
        height=float_spec.height,
        width=float_spec.width,
        channels=float_spec.channels,
        color_order=float_spec.color_order,
        dtype=in_dtype,
        resize=float_spec.resize,
        normalization=Normalization(scale=1.0, offset=0.0),  # raw pixels; the model normalises
        quantization=in_quant,
    )
    output_spec = OutputSpec(
        embedding_dim=out_shape[1],
        dtype=out_dtype,
        l2_normalized=True,
        quantization=_quant(out) if out_dtype != "float32" else None,
    )
    return input_spec, output_spec
