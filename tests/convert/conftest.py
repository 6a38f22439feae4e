"""Fixtures of the convert tests: a micro extractor that converts in about a second.

The micro extractor follows the extractor contract (float32 raw RGB 0..255 in, normalisation inside,
L2-normalised embedding out) with a few random conv layers; its embedding layer's bias is set so
the fixture images' embeddings are centred, which makes them point in clearly different directions
(a parity check over near-identical embeddings would prove little)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

MICRO_SIZE = 48
MICRO_DIM = 16


def build_micro_extractor(calibration_inputs: np.ndarray):  # -> keras.Model
    import keras

    from training.model import L2Normalize

    keras.utils.set_random_seed(0)
    inputs = keras.Input((MICRO_SIZE, MICRO_SIZE, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(MICRO_DIM, name="embedding")
    features = dense(x)
    model = keras.Model(inputs, L2Normalize(name="l2_normalize")(features), name="extractor")
    raw = np.asarray(keras.Model(inputs, features)(calibration_inputs), dtype=np.float32)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias - raw.mean(axis=0)])
    return model


@pytest.fixture(scope="session")
def micro_run_dir(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    from convert.calibration import balanced_selection, load_images, model_inputs
    from device.bundle import InputSpec

    spec = InputSpec(height=MICRO_SIZE, width=MICRO_SIZE, dtype="float32")
    images = load_images(balanced_selection(fixture_dir / "train", 64)).images
    model = build_micro_extractor(model_inputs(images, spec))
    run_dir = tmp_path_factory.mktemp("micro_run") / "run"
    run_dir.mkdir()
    model.save(run_dir / "extractor.keras")
    classes = sorted(p.name for p in (fixture_dir / "train").iterdir() if p.is_dir())
    config = {
        "format": "prodrec-run",
        "format_version": 1,
        "model": {"backbone": "micro", "alpha": 1.0, "input_size": MICRO_SIZE, "head": "test"},
        "preprocessing": {
            "input_size": [MICRO_SIZE, MICRO_SIZE],
            "color_order": "RGB",
            "resize": "area",
        },
        "classes": classes,
        "threshold": {"value": 0.42, "method": "test", "target_far": 0.01},
    }
    (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return run_dir


@pytest.fixture(scope="session")
def micro_bundles(
    tmp_path_factory: pytest.TempPathFactory, micro_run_dir: Path, fixture_dir: Path
) -> dict[str, Path]:
    """The micro extractor converted in every mode, parity over the fixture's test/ images."""
    from convert import QUANT_MODES, convert_run

    root = tmp_path_factory.mktemp("micro_bundles")
    return {
        quant: convert_run(
            micro_run_dir,
            root / quant,
            quant,
            fixture_dir / "train",
            parity_dir=fixture_dir / "test",
            latency_runs=3,
        )
        for quant in QUANT_MODES
    }
