"""Session fixtures shared by every package's tests.

- `fixture_dir`: tests/fixtures/grocery ({train,test}/<class>/*.jpg, 8 classes).
- `tiny_run_dir`: a RUN_DIR from a literal tiny `training.fit` on the fixture's train/ images
  (MobileNetV2 alpha 0.35, 96 px, weights=None, embedding 32, 2 epochs with the top quarter of the
  backbone unfrozen, seed 0) with a threshold calibrated by `training.calibrate` (or, if
  calibration cannot run on so few images, a fixed one recorded with method "test-fixture").
  Its embeddings differ from image to image because `fit` re-estimates the BatchNormalization
  statistics of a from-scratch backbone after training (config.json `training.bn_recalibration`),
  but it is a near-random network: a judge of mechanics, not of recognition.
- `tiny_bundle_dir`: the int8 bundle `python -m convert` makes of `tiny_run_dir`, calibrated on the
  fixture's train/ images, written with `force=True`: a near-random MobileNetV2 does not survive
  int8 quantisation (mean Keras/int8 cosine ~0.6 on the fixture, measured; the benchmark's trained
  model reaches 0.99), so its parity is recorded as failed and `provenance.forced` is true. It is a
  real, loadable uint8-input bundle for mechanics tests, not a judge of accuracy; int8 parity above
  the bar is tested in tests/convert with an extractor that quantises well.
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

log = logging.getLogger(__name__)

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "grocery"
TINY_FIXTURE_THRESHOLD = 0.5  # used only when calibration cannot run on the fixture


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, fixture_dir: Path) -> Path:
    from training.config import FitConfig
    from training.fit import fit
    from training.run import read_run_config, write_run_config

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
    log.info("tiny_run_dir: fit in %.1f s", time.perf_counter() - started)
    try:
        from training.calibrate import calibrate_run
    except ImportError:
        calibrate_run = None
    calibrated = False
    if calibrate_run is not None:
        try:
            calibrate_run(run_dir, gallery_shots=1, progress=False)
            calibrated = True
        except ValueError as exc:  # too few images per class on the fixture
            log.warning("tiny_run_dir: calibration failed (%s); using a fixed threshold", exc)
    if not calibrated:
        cfg = read_run_config(run_dir)
        cfg["threshold"] = {"value": TINY_FIXTURE_THRESHOLD, "method": "test-fixture"}
        write_run_config(run_dir, cfg)
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
