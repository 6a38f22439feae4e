"""End-to-end conversion: four modes, parity, the refusal path, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert import ParityError, convert_run
from convert.calibration import balanced_selection, load_images, model_inputs
from convert.cli import main
from convert.pipeline import keras_embed
from convert.source import load_extractor
from device.bundle import InputSpec, read_bundle_meta, sha256_file
from device.embedder import Embedder

from .conftest import MICRO_DIM, MICRO_SIZE


def _test_images(fixture_dir: Path) -> list[np.ndarray]:
    return load_images(balanced_selection(fixture_dir / "test", 32)).images


@pytest.mark.parametrize("quant", ["int8", "float16", "dynamic", "float32"])
def test_micro_extractor_converts_in_every_mode(
    quant: str, micro_bundles: dict[str, Path], micro_run_dir: Path, fixture_dir: Path
) -> None:
    bundle = micro_bundles[quant]
    meta = read_bundle_meta(bundle)
    assert meta.model_id == sha256_file(bundle / "model.tflite")
    assert meta.provenance.quantization == quant
    assert meta.provenance.source_run == str(micro_run_dir.resolve())
    assert meta.provenance.forced is False
    assert (meta.input.height, meta.input.width, meta.input.color_order) == (MICRO_SIZE,) * 2 + (
        "RGB",
    )
    assert meta.output.embedding_dim == MICRO_DIM
    assert meta.output.dtype == "float32" and meta.output.l2_normalized
    assert meta.threshold == pytest.approx(0.42)
    assert meta.threshold_info == {"method": "test", "target_far": 0.01}
    assert len(meta.classes) == 8
    if quant == "int8":
        assert meta.input.dtype == "uint8"
        # raw pixels: the calibration range 0..255 maps onto uint8 one to one
        assert (meta.input.quantization.scale, meta.input.quantization.zero_point) == (1.0, 0)
    else:
        assert meta.input.dtype == "float32" and meta.input.quantization is None

    report = json.loads((bundle / "parity.json").read_text())
    assert report["n"] == 32 and report["held_out"].startswith("--parity")
    assert report["passed"] and report["mean_cosine"] >= 0.98
    assert meta.parity["mean_cosine"] == report["mean_cosine"]
    assert set(report["latency"]) >= {"runtime", "threads_1", "threads_2"}
    assert report["size_bytes"] == (bundle / "model.tflite").stat().st_size

    # Independent check: the device's Embedder vs the Keras model on the same images. Besides the
    # cosine, each TFLite embedding must be nearest to its own image's Keras embedding.
    images = _test_images(fixture_dir)
    model = load_extractor(micro_run_dir)
    spec = InputSpec(height=MICRO_SIZE, width=MICRO_SIZE, dtype="float32")
    reference = keras_embed(model, model_inputs(images, spec))
    spread = reference @ reference.T
    assert spread[np.triu_indices(len(images), 1)].mean() < 0.5  # embeddings differ per image
    with Embedder(bundle) as embedder:
        converted = embedder.embed_many(images)
    cosines = np.sum(reference * converted, axis=1)
    assert cosines.mean() == pytest.approx(report["mean_cosine"], abs=1e-5)
    bar = 0.9999 if quant in ("float32", "float16") else 0.98
    assert cosines.mean() >= bar
    assert np.all(np.argmax(converted @ reference.T, axis=1) == np.arange(len(images)))


def test_int8_sizes_are_smaller(micro_bundles: dict[str, Path]) -> None:
    size = {q: (b / "model.tflite").stat().st_size for q, b in micro_bundles.items()}
    assert size["int8"] < size["float16"] < size["float32"]


def test_tiny_run_int8_bundle(tiny_bundle_dir: Path, tiny_run_dir: Path) -> None:
    meta = read_bundle_meta(tiny_bundle_dir)
    run_cfg = json.loads((tiny_run_dir / "config.json").read_text())
    assert meta.input.dtype == "uint8"
    assert (meta.input.height, meta.input.width) == (96, 96)
    assert meta.output.embedding_dim == 32
    assert list(meta.classes) == run_cfg["classes"]
    assert meta.threshold == pytest.approx(run_cfg["threshold"]["value"])
    report = json.loads((tiny_bundle_dir / "parity.json").read_text())
    # fixture train/: 64 images, every 5th held out
    assert report["n"] == 12 and report["calibration"]["n_images"] == 52
    # written with force=True (see tests/conftest.py): whatever the parity, it is recorded honestly
    assert meta.provenance.forced is (not report["passed"])
    assert report["passed"] is (report["mean_cosine"] >= 0.98)
    assert meta.parity["mean_cosine"] == report["mean_cosine"]
    assert not list(tiny_bundle_dir.parent.glob(".*tmp-*"))  # staging folder renamed away


def test_parity_failure_refuses_and_writes_nothing(
    micro_run_dir: Path, fixture_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    # int8 cannot reach a mean cosine of exactly 1.0: the bar is missed for sure
    with pytest.raises(ParityError, match="parity check failed") as info:
        convert_run(
            micro_run_dir, out, "int8", fixture_dir / "train", min_cosine=1.0, latency_runs=1
        )
    assert info.value.report["mean_cosine"] < 1.0
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging leftovers

    forced = convert_run(
        micro_run_dir,
        out,
        "int8",
        fixture_dir / "train",
        min_cosine=1.0,
        force=True,
        latency_runs=1,
    )
    meta = read_bundle_meta(forced)
    assert meta.provenance.forced is True
    assert meta.parity["passed"] is False and meta.parity["forced"] is True


def test_cli_writes_bundle_and_refuses_overwrite(
    micro_run_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    argv = [
        str(micro_run_dir / "extractor.keras"),
        "--quant",
        "float32",
        "--calibration",
        str(fixture_dir / "train"),
        "--out",
        str(out),
        "--latency-runs",
        "2",
        "--enroll",
        str(fixture_dir / "train"),
        "--query",
        str(fixture_dir / "test"),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity      mean cosine" in printed and "P@1" in printed and "latency" in printed
    report = json.loads((out / "parity.json").read_text())
    pa = report["p_at_1"]
    assert pa["keras"]["n_queries"] == 32 and pa["keras"]["n_products"] == 8
    assert pa["keras"]["p_at_1"] == pytest.approx(pa["tflite"]["p_at_1"], abs=1 / 32)
    model_id = read_bundle_meta(out).model_id

    assert main(argv) == 2  # exists: refuses without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert read_bundle_meta(out).model_id == model_id
    assert main([*argv, "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["b"]

    # --overwrite replaces a bundle only: never the run itself, a photo folder or other files.
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "todo.txt").write_text("keep me")
    out_at = argv.index("--out") + 1
    for target in (keep, micro_run_dir):
        argv[out_at] = str(target)
        assert main([*argv, "--overwrite"]) == 2
        assert "not a model bundle" in capsys.readouterr().err
    assert (keep / "todo.txt").read_text() == "keep me"
    assert (micro_run_dir / "extractor.keras").is_file()


def test_cli_parity_failure_exit_code(
    micro_run_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            str(micro_run_dir),
            "--calibration",
            str(fixture_dir / "train"),
            "--out",
            str(tmp_path / "b"),
            "--min-cosine",
            "1.0",
            "--latency-runs",
            "1",
            "-q",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "No bundle was written" in err and "--force" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration", "{missing}"], "not a folder of images"),
        (["--calibration", "{empty}"], "holds no images"),
        (["--calibration", "{train}", "--enroll", "{train}"], "--enroll and --query go together"),
        (["--calibration", "{train}", "--latency-runs", "0"], "--latency-runs must be 1 or more"),
    ],
)
def test_cli_bad_input(
    args: list[str],
    message: str,
    micro_run_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "train": fixture_dir / "train",
    }
    argv = [str(micro_run_dir), "--out", str(tmp_path / "b")]
    argv += [a.format(**paths) for a in args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_extractor_without_config_needs_colour_order(
    micro_run_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lone = tmp_path / "lone.keras"
    shutil.copy(micro_run_dir / "extractor.keras", lone)
    argv = [str(lone), "--calibration", str(fixture_dir / "train"), "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "--color-order" in capsys.readouterr().err


def test_a_model_whose_output_is_not_the_runs_embedding_is_refused(
    micro_run_dir: Path, fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # e.g. model.keras (extractor + classification head) given instead of extractor.keras
    run = tmp_path / "run"
    shutil.copytree(micro_run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["embedding_dim"] = 999
    (run / "config.json").write_text(json.dumps(config))
    argv = [str(run), "--calibration", str(fixture_dir / "train"), "--out", str(tmp_path / "b")]
    assert main([*argv, "--quant", "float32", "-q"]) == 2
    assert "but its run's config.json says the embedding has 999" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
