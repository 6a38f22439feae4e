"""Fixtures of the evaluation tests: a tiny RUN_DIR and small folder trees from the fixture."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "grocery"


@pytest.fixture(scope="session")
def eval_run_dir(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared `tiny_run_dir` (calibration writes into it)."""
    dst = tmp_path_factory.mktemp("eval-run") / "run"
    shutil.copytree(tiny_run_dir, dst)
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


@pytest.fixture
def sets_dir(fixture_dir: Path, tmp_path: Path) -> Path:
    """A --data folder with one product set, `fix` (bench/domains.py's test protocol)."""
    from tests.eval.test_bench_domains import make_set

    return make_set(fixture_dir, tmp_path / "data")
