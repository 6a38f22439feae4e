"""Crop -> embedding with a model bundle (`model.tflite` + `model.json`).

The Embedder reads everything it needs from `model.json` (input size, colour order, dtype and
quantisation, embedding size) and refuses a bundle whose `.tflite` disagrees with it, so a wrong or
half-copied bundle fails at start-up with a message instead of producing silently wrong matches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BundleMeta, Quantization, embedding_id, read_bundle_meta
from .closing import Closing
from .errors import BundleError, ModelError
from .preprocess import prepare, to_input_tensor
from .runtime import load_interpreter, runtime_name

logger = logging.getLogger(__name__)

_FIX = "re-run `python -m convert` and copy model.tflite and model.json together"


class Embedder(Closing):
    """Embeds BGR crops into unit-norm float32 vectors of size `dim`.

    Usage:
        with Embedder("models/arcface-int8") as emb:
            vec = emb.embed(crop_bgr)
    """

    def __init__(self, bundle_dir: str | Path, num_threads: int = 2) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.meta: BundleMeta = read_bundle_meta(self.bundle_dir)  # also verifies the model id
        self.model_id: str = self.meta.model_id
        self.embedding_id: str = embedding_id(self.meta)
        self.dim: int = self.meta.output.embedding_dim
        self.num_threads = num_threads
        self.runtime: str = runtime_name()
        self._interpreter: Any = load_interpreter(
            self.bundle_dir / self.meta.model_file, num_threads=num_threads
        )
        try:
            self._input_index, self._output_index, self._output_quant = self._check_model()
        except BundleError:
            self.close()
            raise
        logger.info(
            "loaded model %s (%s, %s, %dx%d -> %d) with %s, %d thread(s)",
            self.meta.name,
            self.meta.provenance.quantization,
            self.model_id[:12],
            self.meta.input.width,
            self.meta.input.height,
            self.dim,
            self.runtime,
            num_threads,
        )

    # --- validation ------------------------------------------------------------------------------

    def _check_model(self) -> tuple[int, int, Quantization | None]:
        where = f"{self.bundle_dir}: model.json and {self.meta.model_file} disagree"
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(
                f"{self.bundle_dir}: expected a model with one input and one output, got "
                f"{len(inputs)} input(s) and {len(outputs)} output(s); {_FIX}"
            )
        inp, out = inputs[0], outputs[0]
        spec = self.meta.input
        shape = tuple(int(v) for v in inp["shape"])
        if shape != spec.shape:
            raise BundleError(
                f"{where}: the model's input shape is {list(shape)}, model.json says "
                f"{list(spec.shape)}; {_FIX}"
            )
        in_dtype = np.dtype(inp["dtype"]).name
        if in_dtype != spec.dtype:
            raise BundleError(
                f"{where}: the model's input dtype is {in_dtype}, model.json says {spec.dtype}; {_FIX}"
            )
        if spec.dtype != "float32":
            actual = _quantization(inp)
            if actual is None or not _same_quant(actual, spec.quantization):
                raise BundleError(
                    f"{where}: the model's input quantisation is {actual}, model.json says "
                    f"{spec.quantization}; {_FIX}"
                )
        out_shape = tuple(int(v) for v in out["shape"])
        if len(out_shape) != 2 or out_shape[0] != 1 or out_shape[1] != self.dim:
            raise BundleError(
                f"{where}: the model outputs shape {list(out_shape)}, model.json says an "
                f"embedding of {self.dim} values; {_FIX}"
            )
        out_dtype = np.dtype(out["dtype"]).name
        if out_dtype != self.meta.output.dtype:
            raise BundleError(
                f"{where}: the model's output dtype is {out_dtype}, model.json says "
                f"{self.meta.output.dtype}; {_FIX}"
            )
        out_quant: Quantization | None = None
        if out_dtype != "float32":
            out_quant = _quantization(out)
            if out_quant is None or not _same_quant(out_quant, self.meta.output.quantization):
                raise BundleError(
                    f"{where}: the model's output quantisation is {out_quant}, model.json says "
                    f"{self.meta.output.quantization}; {_FIX}"
                )
        return int(inp["index"]), int(out["index"]), out_quant

    # --- embedding -------------------------------------------------------------------------------

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        """BGR uint8 crop of any size -> (D,) float32 unit vector."""
        return self._run(prepare(crop_bgr, self.meta.input))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Already resized HxWx3 uint8 pixels, in the bundle's colour order -> (D,) unit vector."""
        spec = self.meta.input
        if pixels.shape != (spec.height, spec.width, spec.channels) or pixels.dtype != np.uint8:
            raise ValueError(
                f"expected {spec.height}x{spec.width}x{spec.channels} uint8 pixels, got "
                f"{pixels.shape} {pixels.dtype}; use embed() for crops of any size"
            )
        return self._run(to_input_tensor(pixels, spec))

    def embed_many(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """BGR crops -> (N, D) float32, one unit vector per row (the model runs at batch 1)."""
        rows = [self.embed(crop) for crop in crops]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows)

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        if self._interpreter is None:
            raise ModelError("the Embedder is closed; open a new one")
        self._interpreter.set_tensor(self._input_index, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output_index)[0]
        if self._output_quant is not None:
            q = self._output_quant
            vec = (raw.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)
        else:
            vec = raw.astype(np.float32, copy=True)
        # Always re-normalise: a no-op for a float L2-normalised output, and it removes the small
        # norm drift of quantised outputs (and normalises models that do not do it themselves).
        norm = float(np.linalg.norm(vec))
        if not math.isfinite(norm) or norm < 1e-12:
            raise ModelError(
                f"model {self.meta.name} produced an invalid embedding (norm {norm}); the bundle "
                f"may be broken: {_FIX}"
            )
        return vec / np.float32(norm)

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the interpreter. Safe to call more than once."""
        self._interpreter = None

    @property
    def closed(self) -> bool:
        return self._interpreter is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.runtime
        return f"Embedder({str(self.bundle_dir)!r}, model_id={self.model_id[:12]}, {state})"


def _quantization(detail: dict[str, Any]) -> Quantization | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return Quantization(scale=float(scale), zero_point=int(zero_point))


def _same_quant(a: Quantization, b: Quantization | None) -> bool:
    return (
        b is not None
        and a.zero_point == b.zero_point
        and math.isclose(a.scale, b.scale, rel_tol=1e-6, abs_tol=0.0)
    )
