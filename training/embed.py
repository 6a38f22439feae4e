"""Embedding image files with a Keras extractor or a converted TFLite bundle.

Both paths decode with `device.images.load_image` and resize with `device.preprocess.resize_rgb`, so
the Keras float model and the device's TFLite model see the same pixels. A bundle is run through
`device.embedder.Embedder`: the device's own loader and preprocessing.

`open_model(path)` picks the right one:
- a folder with `model.json` -> TFLite bundle;
- a RUN_DIR (folder with `extractor.keras`) or an `.keras` file -> Keras extractor.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import META_FILE, InputSpec
from device.images import load_image
from device.preprocess import resize_rgb

from .metrics import l2_normalize

logger = logging.getLogger(__name__)

EXTRACTOR_FILE = "extractor.keras"
CONFIG_FILE = "config.json"


def _progress(label: str, done: int, total: int, start: float, stream: Any = None) -> None:
    stream = stream if stream is not None else sys.stderr
    rate = done / max(time.monotonic() - start, 1e-6)
    end = "\n" if done == total else "\r"
    print(f"  {label}: {done}/{total} images ({rate:.1f}/s)", end=end, file=stream, flush=True)


class ImageEmbedder:
    """Common face of the Keras and TFLite embedders."""

    kind: str = ""
    name: str = ""
    dim: int = 0
    input_spec: InputSpec
    threshold: float | None = None
    threshold_info: dict[str, Any]

    def embed_pixels_batch(self, pixels: np.ndarray) -> np.ndarray:  # (N,H,W,3) uint8 -> (N,D)
        raise NotImplementedError

    def embed_paths(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int = 32,
        progress: bool = True,
        label: str = "embedding",
    ) -> np.ndarray:
        """Embed image files -> (N, D) float32 unit vectors (rows in the order of `paths`)."""
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        start = time.monotonic()
        for lo in range(0, len(paths), batch_size):
            chunk = paths[lo : lo + batch_size]
            pixels = np.stack([resize_rgb(load_image(p), self.input_spec) for p in chunk])
            emb = self.embed_pixels_batch(pixels)
            if emb.shape[1] != self.dim:
                raise ValueError(
                    f"model {self.name} produced {emb.shape[1]}-value embeddings, expected {self.dim}"
                )
            out[lo : lo + len(chunk)] = emb
            if progress:
                _progress(label, lo + len(chunk), len(paths), start)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "embedding_dim": self.dim,
            "input_size": [self.input_spec.height, self.input_spec.width],
            "color_order": self.input_spec.color_order,
            "resize": self.input_spec.resize,
        }

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spec_from_run_config(cfg: dict[str, Any]) -> InputSpec:
    """The float32 input spec of a Keras extractor from config.json["preprocessing"]."""
    pre = cfg.get("preprocessing") or {}
    size = pre.get("input_size") or cfg.get("model", {}).get("input_size")
    if size is None:
        raise ValueError("config.json has no preprocessing.input_size; is this a RUN_DIR?")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return InputSpec(
        height=h,
        width=w,
        color_order=str(pre.get("color_order", "RGB")),
        dtype="float32",
        resize=str(pre.get("resize", "area")),
    )


class KerasEmbedder(ImageEmbedder):
    """A Keras model taking raw 0..255 pixels (N,H,W,3) float32 and returning (N,D) embeddings."""

    kind = "keras"

    def __init__(
        self,
        model: Any,
        spec: InputSpec,
        *,
        name: str = "keras",
        threshold: float | None = None,
        threshold_info: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.input_spec = spec
        self.name = name
        self.threshold = threshold
        self.threshold_info = dict(threshold_info or {})
        self.run_config = run_config
        self.dim = int(model.output_shape[-1])
        shape = tuple(model.input_shape[1:3])
        if None not in shape and shape != (spec.height, spec.width):
            raise ValueError(
                f"model {name} takes {shape[0]}x{shape[1]} inputs but its preprocessing says "
                f"{spec.height}x{spec.width}"
            )

    @classmethod
    def from_path(cls, path: str | Path) -> KerasEmbedder:
        from .model import load_extractor

        path = Path(path)
        run_dir = path if path.is_dir() else path.parent
        cfg: dict[str, Any] | None = None
        if (run_dir / CONFIG_FILE).is_file():
            from .run import read_run_config

            cfg = read_run_config(run_dir)
        model = load_extractor(path)
        if cfg is not None:
            spec = spec_from_run_config(cfg)
        else:
            h, w = model.input_shape[1:3]
            if h is None or w is None:
                raise ValueError(
                    f"{path}: no config.json beside the model and no fixed input size in the model; "
                    "point --model at the RUN_DIR"
                )
            spec = InputSpec(height=int(h), width=int(w), dtype="float32")
        declared = ((cfg or {}).get("model") or {}).get("embedding_dim")
        if declared is not None and int(declared) != int(model.output_shape[-1]):
            raise ValueError(
                f"embedding size mismatch: {run_dir / CONFIG_FILE} says {declared} values but "
                f"{path} outputs {model.output_shape[-1]}; the files come from different runs"
            )
        thr = (cfg or {}).get("threshold")
        value = thr.get("value") if isinstance(thr, dict) else None
        return cls(
            model,
            spec,
            name=str(path),
            threshold=None if value is None else float(value),
            threshold_info=thr if isinstance(thr, dict) else None,
            run_config=cfg,
        )

    def embed_pixels_batch(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32)
        y = np.asarray(self.model(x, training=False), dtype=np.float32)
        return l2_normalize(y)


class BundleEmbedder(ImageEmbedder):
    """A TFLite bundle, run through the device's `Embedder` (its loader and preprocessing)."""

    kind = "tflite"

    def __init__(self, bundle_dir: str | Path, num_threads: int = 2) -> None:
        from device.embedder import Embedder

        self._embedder = Embedder(bundle_dir, num_threads=num_threads)
        meta = self._embedder.meta
        self.meta = meta
        self.input_spec = meta.input
        self.name = f"{bundle_dir} ({meta.name}, {meta.provenance.quantization})"
        self.dim = int(self._embedder.dim)
        self.threshold = meta.threshold
        self.threshold_info = dict(meta.threshold_info)

    def embed_pixels_batch(self, pixels: np.ndarray) -> np.ndarray:
        return np.stack([self._embedder.embed_pixels(p) for p in pixels]).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            quantization=self.meta.provenance.quantization,
            model_id=self.meta.model_id,
            source_run=self.meta.provenance.source_run,
        )
        return d

    def close(self) -> None:
        self._embedder.close()


def open_model(path: str | Path, num_threads: int = 2) -> ImageEmbedder:
    """Open a TFLite bundle folder, a RUN_DIR or an .keras extractor file."""
    path = Path(path)
    if path.is_dir() and (path / META_FILE).is_file():
        return BundleEmbedder(path, num_threads=num_threads)
    if path.is_dir() and (path / EXTRACTOR_FILE).is_file():
        return KerasEmbedder.from_path(path)
    if path.is_file() and path.suffix == ".keras":
        return KerasEmbedder.from_path(path)
    raise ValueError(
        f"--model {path}: expected a bundle folder (model.json + model.tflite), a RUN_DIR holding "
        f"{EXTRACTOR_FILE}, or an .keras file"
    )


def embed_split(
    embedder: ImageEmbedder,
    split: dict[str, list[Path]],
    *,
    label: str = "embedding",
    progress: bool = True,
) -> tuple[np.ndarray, list[str], list[Path]]:
    """Embed every image of a {product: paths} split -> (embeddings, labels, paths)."""
    paths = [p for ps in split.values() for p in ps]
    labels = [k for k, ps in split.items() for _ in ps]
    emb = embedder.embed_paths(paths, progress=progress, label=label)
    return emb, labels, paths
