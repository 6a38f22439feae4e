"""Session fixtures shared by every package's tests.

- `fixture_dir`: tests/fixtures/grocery ({train,test}/<class>/*.jpg, 8 classes).
- `tiny_run_dir`: a RUN_DIR from a literal tiny `training.fit` on the fixture's train/ images
  (MobileNetV2 alpha 0.35, 96 px, weights=None, embedding 32, 2 epochs with the top quarter of the
  backbone unfrozen, seed 0) with a threshold calibrated by `training.calibrate`.
  Its embeddings differ from image to image because `fit` re-estimates the BatchNormalization
  statistics of a from-scratch backbone after training (config.json `training.bn_recalibration`),
  but it is a near-random network: a judge of mechanics, not of recognition.
- `tiny_bundle_dir`: the int8 bundle `python -m convert` makes of `tiny_run_dir`, calibrated on the
  fixture's train/ images, written with `force=True`: a near-random MobileNetV2 does not survive
  int8 quantisation (mean Keras/int8 cosine 0.56 on the fixture, measured; the benchmark's trained
  model reaches 0.99), so its parity is recorded as failed and `provenance.forced` is true. It is a
  real, loadable uint8-input bundle for mechanics tests, not a judge of accuracy; int8 parity above
  the bar is tested in tests/convert with an extractor that quantises well.
- `default_bundle_dir`: models/default, the project's committed default int8 bundle (a real
  trained MobileNetV2 ArcFace model): the judge of recognition in the device tests. Read-only.
Each is built once per session (a few tens of seconds) and must be treated as read-only: copy it
(`shutil.copytree`) before changing anything.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A runtime chosen in the caller's shell (device/runtime.py) must not change what the tests test.
os.environ.pop("PRODREC_TFLITE_RUNTIME", None)

log = logging.getLogger(__name__)

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "grocery"
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def default_bundle_dir() -> Path:
    # Committed with the code, so its absence is a broken checkout, not a reason to skip.
    for name in ("model.json", "model.tflite"):
        if not (DEFAULT_BUNDLE_DIR / name).is_file():
            pytest.fail(
                f"the committed default bundle is incomplete: {DEFAULT_BUNDLE_DIR / name} is missing"
            )
    return DEFAULT_BUNDLE_DIR


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    # Device tests run without TensorFlow (as on a Pi): those needing a freshly trained run skip.
    pytest.importorskip(
        "tensorflow",
        reason="tiny_run_dir trains a model: needs TensorFlow (requirements-train.txt)",
    )
    from training.calibrate import calibrate_run
    from training.config import FitConfig
    from training.fit import fit

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    config = FitConfig(
        alpha=0.35,
        input_size=96,
        weights=None,
        embedding_dim=32,
        epochs=2,
        frozen_epochs=0,
        unfreeze=(0.25,),  # one stage; about a third of the time of a fully unfrozen backbone
        batch_size=16,
        val_split=0.25,  # 2 validation images per class, so calibration has genuine pairs
        augment=False,
        seed=0,
    )
    started = time.perf_counter()
    fit(fixture_dir / "train", run_dir, config, progress=False)
    calibrate_run(run_dir, gallery_shots=1, progress=False)
    log.info("tiny_run_dir: fit and calibration in %.1f s", time.perf_counter() - started)
    return run_dir


@pytest.fixture(scope="session")
def tiny_bundle_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_run_dir: Path, fixture_dir: Path
) -> Path:
    from convert import convert_run

    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    return convert_run(
        tiny_run_dir,
        out,
        "int8",
        fixture_dir / "train",
        force=True,
        latency_runs=3,
        latency_threads=(1,),
    )
