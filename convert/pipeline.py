"""`convert_run`: extractor -> SavedModel -> TFLite -> parity check -> bundle.

The bundle is assembled in a hidden staging folder beside `out_dir` and renamed into place only when
the parity check passes (or is forced), so a refused or crashed conversion never leaves a bundle
the device could pick up. The parity check runs the staged bundle through the device's own
`Embedder`, so it measures exactly what the device will compute."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import (
    META_FILE,
    MODEL_FILE,
    BundleMeta,
    InputSpec,
    Provenance,
    sha256_file,
    write_bundle_meta,
)
from device.files import replace_dir, staging_dir

from . import calibration as cal
from .adaptation import DEFAULT_COHORT_SIZE, compute_adaptation
from .latency import DEFAULT_RUNS, measure_latency
from .parity import (
    DEFAULT_MIN_COSINE,
    cosine_summary,
    labelled_images,
    precision_at_1,
    row_cosines,
)
from .quantize import QUANT_MODES, convert_saved_model, read_io_specs
from .source import Source, float_spec, load_extractor, resolve_source

log = logging.getLogger(__name__)

PARITY_FILE = "parity.json"
TOOL = "convert 0.1.0"


class ConvertError(RuntimeError):
    """The conversion itself failed (converter error, unexpected converted model)."""


class ParityError(ConvertError):
    """The converted model does not follow the Keras model closely enough; no bundle written."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def convert_run(
    src: str | Path,
    out_dir: str | Path,
    quant: str = "int8",
    calibration_dir: str | Path | None = None,
    *,
    parity_dir: str | Path | None = None,
    enroll_dir: str | Path | None = None,
    query_dir: str | Path | None = None,
    max_images: int = cal.DEFAULT_MAX_IMAGES,
    min_cosine: float = DEFAULT_MIN_COSINE,
    force: bool = False,
    overwrite: bool = False,
    name: str | None = None,
    color_order: str | None = None,
    resize: str | None = None,
    input_size: int | None = None,
    latency_runs: int = DEFAULT_RUNS,
    latency_threads: Sequence[int] = (1, 2),
    adapt: bool | None = None,
    cohort_size: int = DEFAULT_COHORT_SIZE,
) -> Path:
    """Convert SRC (a RUN_DIR or an extractor .keras) into a bundle folder `out_dir`.

    `adapt` writes the format-2 `adaptation` block (domain mean and cohort, from the calibration
    images through the converted model; see convert/adaptation.py); None: on for runs whose
    embedding is the backbone's pooled features (`training generalise`), off otherwise.

    Raises ValueError for bad arguments or inputs, ParityError when the parity check fails (and
    `force` is false), ConvertError when TensorFlow's converter fails. Returns `out_dir`.
    """
    started = time.perf_counter()
    if quant not in QUANT_MODES:
        raise ValueError(f"--quant {quant!r}: expected one of {list(QUANT_MODES)}")
    if calibration_dir is None:
        raise ValueError(
            "--calibration DIR is required: its images calibrate int8 quantisation and, held out, "
            "feed the parity check that every conversion runs"
        )
    if (enroll_dir is None) != (query_dir is None):
        raise ValueError("--enroll and --query go together (P@1 needs both trees)")
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"--min-cosine must be in (0, 1], got {min_cosine}")
    if latency_runs < 1:
        raise ValueError(f"--latency-runs must be 1 or more, got {latency_runs}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    source = resolve_source(
        src, color_order=color_order, resize=resize, input_size=input_size, name=name
    )

    # Images: calibration set and held-out parity set, both through the device's preprocessing.
    selected = cal.balanced_selection(calibration_dir, max_images)
    if parity_dir is not None:
        calib_paths, parity_paths = selected, cal.balanced_selection(parity_dir, max_images)
        held_out = f"--parity {parity_dir}"
    else:
        calib_paths, parity_paths = cal.split_holdout(selected)
        held_out = f"every {cal.HOLDOUT_EVERY}th selected calibration image"
    if not parity_paths:
        raise ValueError(
            f"{calibration_dir} gives too few images ({len(selected)}) to hold any out for the parity "
            f"check (every {cal.HOLDOUT_EVERY}th is held out): add images or pass --parity DIR"
        )

    log.info("loading %s", source.extractor_path)
    model = load_extractor(source.extractor_path)
    out_size = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if source.embedding_dim is not None and out_size != source.embedding_dim:
        # e.g. model.keras (extractor + head: class scores) given instead of extractor.keras
        raise ValueError(
            f"{source.extractor_path} outputs {out_size} values, but its run's config.json says "
            f"the embedding has {source.embedding_dim}: give the RUN_DIR or its extractor.keras"
        )
    spec = float_spec(source, tuple(model.input_shape))
    calib = cal.prepare_files(calib_paths, spec)
    if len(calib.inputs) == 0:
        raise ValueError(f"none of the calibration images in {calibration_dir} could be read")
    parity_images = cal.load_images(parity_paths)
    if not parity_images.images:
        raise ValueError("none of the held-out parity images could be read")
    log.info(
        "%d calibration images, %d held out for parity (%s), from %s",
        len(calib.inputs),
        len(parity_images.images),
        held_out,
        calibration_dir,
    )
    keras_parity = keras_embed(model, cal.model_inputs(parity_images.images, spec))
    norms = np.linalg.norm(keras_parity, axis=1)
    l2_normalized = bool(np.all(np.abs(norms - 1.0) < 1e-3))
    if not l2_normalized:
        log.warning("the Keras extractor's outputs are not unit vectors (norms %s)", norms[:3])

    staging = staging_dir(out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="convert-savedmodel-") as tmp:
            from .export import export_saved_model

            saved_model = export_saved_model(model, Path(tmp) / "saved_model", spec)
            representative = cal.representative_dataset(calib.inputs) if quant == "int8" else None
            try:
                flatbuffer = convert_saved_model(saved_model, quant, representative)
            except RuntimeError as exc:
                raise ConvertError(str(exc)) from exc
        model_path = staging / MODEL_FILE
        model_path.write_bytes(flatbuffer)
        input_spec, output_spec = read_io_specs(model_path, spec)
        output_spec = dataclasses.replace(output_spec, l2_normalized=l2_normalized)
        meta = BundleMeta(
            name=source.name,
            model_id=sha256_file(model_path),
            input=input_spec,
            output=output_spec,
            provenance=_provenance(source, quant, forced=False),
            threshold=source.threshold,
            threshold_info=source.threshold_info,
            classes=source.classes,
        )
        write_bundle_meta(staging, meta)

        report = _parity_report(staging, keras_parity, parity_images, min_cosine)
        report["held_out"] = held_out
        report["calibration"] = {
            "dir": str(calibration_dir),
            "n_images": len(calib.inputs),
            "max_images": max_images,
            "skipped": [f"{p}: {why}" for p, why in calib.skipped + parity_images.skipped],
        }
        if enroll_dir is not None and query_dir is not None:
            report["p_at_1"] = _p_at_1(model, spec, staging, Path(enroll_dir), Path(query_dir))
        report["size_bytes"] = model_path.stat().st_size
        report["latency"] = measure_latency(model_path, threads=latency_threads, runs=latency_runs)

        passed = report["mean_cosine"] >= min_cosine
        report["passed"] = passed
        report["forced"] = bool(force and not passed)
        if not passed and not force:
            raise ParityError(_refusal(report, quant, min_cosine), report)
        if not passed:
            log.warning(
                "parity below the bar (mean cosine %.4f < %.2f): bundle written because of --force",
                report["mean_cosine"],
                min_cosine,
            )
        if adapt is None:
            adapt = source.embedding_kind == "pooled"
        adaptation = None
        if adapt:
            adaptation = compute_adaptation(
                staging,
                cal.load_images(selected).images,
                cohort_size=cohort_size,
                source=f"{len(selected)} images of {calibration_dir}",
            )
        meta = dataclasses.replace(
            meta,
            provenance=_provenance(source, quant, forced=report["forced"]),
            parity=_parity_summary(report),
            adaptation=adaptation,
        )
        write_bundle_meta(staging, meta)
        report["quantization"] = quant
        report["model_id"] = meta.model_id
        report["duration_s"] = round(time.perf_counter() - started, 1)
        (staging / PARITY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", out_dir, meta.model_id[:12])
    return out_dir


def keras_embed(model: Any, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, H, W, 3) float32 raw pixels -> (N, D) float32 Keras embeddings (inference mode)."""
    rows = [
        np.asarray(model(inputs[i : i + batch_size], training=False), dtype=np.float32)
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(rows)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Before any slow work: --out must be a new or empty folder, or (with --overwrite) a bundle,
    in a folder this user can write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the bundle")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out_dir} already exists and is not empty: pass --overwrite")
        if not (out_dir / META_FILE).is_file():
            # --overwrite replaces a bundle, never a run, a photo folder or anything else.
            raise ValueError(
                f"--out {out_dir} holds files but no {META_FILE}: it is not a model bundle, and "
                "--overwrite only replaces a bundle; give another --out"
            )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(prefix=".write-test-", dir=out_dir.parent).cleanup()
    except OSError as exc:
        raise ValueError(
            f"cannot write the bundle into {out_dir.parent} ({exc.strerror or exc}): give an --out "
            "in a folder you can write"
        ) from exc


def _provenance(source: Source, quant: str, *, forced: bool) -> Provenance:
    import tensorflow as tf

    return Provenance(
        source_run=str((source.run_dir or source.extractor_path).resolve()),
        quantization=quant,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        forced=forced,
        tool=TOOL,
        tensorflow=tf.__version__,
    )


def _parity_report(
    bundle: Path,
    keras_parity: np.ndarray,
    images: cal.LoadedImages,
    min_cosine: float,
) -> dict[str, Any]:
    from device.embedder import Embedder

    with Embedder(bundle) as embedder:
        tflite = embedder.embed_many(images.images)
    cosines = row_cosines(keras_parity, tflite)
    report: dict[str, Any] = {"min_required_mean_cosine": min_cosine, **cosine_summary(cosines)}
    worst = np.argsort(cosines)[:5]
    report["worst"] = [
        {"image": str(images.paths[i]), "cosine": round(float(cosines[i]), 6)} for i in worst
    ]
    log.info(
        "parity over %d held-out images: mean cosine %.4f, min %.4f",
        report["n"],
        report["mean_cosine"],
        report["min_cosine"],
    )
    return report


def _p_at_1(
    model: Any, spec: InputSpec, bundle: Path, enroll_dir: Path, query_dir: Path
) -> dict[str, Any]:
    from device.embedder import Embedder

    enroll = labelled_images(enroll_dir)
    query = labelled_images(query_dir)
    enroll_set = cal.load_images([p for p, _ in enroll])
    query_set = cal.load_images([p for p, _ in query])
    label_of = dict(enroll + query)
    e_labels = [label_of[p] for p in enroll_set.paths]
    q_labels = [label_of[p] for p in query_set.paths]
    k_e = keras_embed(model, cal.model_inputs(enroll_set.images, spec))
    k_q = keras_embed(model, cal.model_inputs(query_set.images, spec))
    with Embedder(bundle) as embedder:
        t_e = embedder.embed_many(enroll_set.images)
        t_q = embedder.embed_many(query_set.images)
    result = {
        "enroll": str(enroll_dir),
        "query": str(query_dir),
        "keras": precision_at_1(k_e, e_labels, k_q, q_labels),
        "tflite": precision_at_1(t_e, e_labels, t_q, q_labels),
    }
    log.info(
        "P@1 keras %.4f, tflite %.4f (%d queries)",
        result["keras"]["p_at_1"],
        result["tflite"]["p_at_1"],
        result["tflite"]["n_queries"],
    )
    return result


def _parity_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of parity.json recorded in model.json."""
    keys = ("n", "mean_cosine", "min_cosine", "min_required_mean_cosine", "passed", "forced")
    summary: dict[str, Any] = {k: report[k] for k in keys}
    summary["held_out"] = report["held_out"]
    summary["calibration_images"] = report["calibration"]["n_images"]
    if "p_at_1" in report:
        summary["p_at_1_keras"] = report["p_at_1"]["keras"]["p_at_1"]
        summary["p_at_1_tflite"] = report["p_at_1"]["tflite"]["p_at_1"]
    summary["size_bytes"] = report["size_bytes"]
    summary["latency"] = report["latency"]
    return summary


def _refusal(report: dict[str, Any], quant: str, min_cosine: float) -> str:
    return (
        f"parity check failed: the {quant} model's embeddings have mean cosine "
        f"{report['mean_cosine']:.4f} (min {report['min_cosine']:.4f}, {report['n']} held-out "
        f"images) to the Keras model's, under the required {min_cosine:.2f}. No bundle was "
        "written. Try more or more representative --calibration images (from the training "
        "classes), or --quant float16/dynamic; --force writes the bundle anyway (recorded in "
        "model.json)."
    )
