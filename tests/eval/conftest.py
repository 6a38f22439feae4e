"""Fixtures of the evaluation tests: a tiny RUN_DIR and small folder trees from the fixture."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "grocery"


def _own_tiny_run(root: Path) -> Path:
    """A random-weights tiny extractor in a RUN_DIR (used when tests/conftest.py has no
    `tiny_run_dir`): the metrics need an extractor, not a good one."""
    from training.model import build_extractor

    run = root / "run"
    run.mkdir()
    model = build_extractor(alpha=0.35, input_size=96, embedding_dim=32, weights=None)
    model.save(run / "extractor.keras")
    classes = sorted(p.name for p in (FIXTURE / "train").iterdir() if p.is_dir())
    cfg = {
        "format": "prodrec-run",
        "format_version": 1,
        "model": {
            "backbone": "mobilenet_v2",
            "alpha": 0.35,
            "input_size": 96,
            "embedding_dim": 32,
            "head": "arcface",
            "weights": None,
        },
        "preprocessing": {
            "input_size": [96, 96],
            "color_order": "RGB",
            "resize": "area",
            "pixel_range": [0, 255],
            "normalization": "inside-model: x/127.5 - 1",
        },
        "classes": classes,
        "training": {"epochs": 0, "seed": 0, "val_split": 0.15},
        "data": {"data_dir": str(FIXTURE / "train")},
        "threshold": None,
    }
    (run / "config.json").write_text(json.dumps(cfg, indent=2))
    return run


@pytest.fixture(scope="session")
def eval_run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared `tiny_run_dir` (calibration writes into it), or our own."""
    root = tmp_path_factory.mktemp("eval-run")
    try:
        shared = Path(request.getfixturevalue("tiny_run_dir"))
    except pytest.FixtureLookupError:
        return _own_tiny_run(root)
    dst = root / "run"
    shutil.copytree(shared, dst)
    return dst


def _link_tree(dst: Path, src: Path, classes: list[str]) -> Path:
    for c in classes:
        (dst / c).parent.mkdir(parents=True, exist_ok=True)
        (dst / c).symlink_to(src / c, target_is_directory=True)
    return dst


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """enroll (8 products, train/), query (6 products, test/), unknown (2 others, test/), and a
    data folder with val/ (the test/ images) for calibration."""
    root = tmp_path_factory.mktemp("eval-trees")
    classes = sorted(p.name for p in (FIXTURE / "train").iterdir() if p.is_dir())
    known, unknown = classes[:6], classes[6:]
    return {
        "enroll_all": FIXTURE / "train",
        "enroll_known": _link_tree(root / "enroll", FIXTURE / "train", known),
        "query": _link_tree(root / "query", FIXTURE / "test", known),
        "unknown": _link_tree(root / "unknown", FIXTURE / "test", unknown),
        "data": _link_tree(root / "data" / "val", FIXTURE / "test", classes).parent,
    }
