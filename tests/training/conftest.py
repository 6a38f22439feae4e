"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def plain_start_fit(
    tiny_run_dir: Path, fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`start_config` fitted with neither --distill nor --l2sp: the control of both tests."""
    from tests.training.helpers import start_config
    from training.fit import fit

    run = tmp_path_factory.mktemp("plain_start") / "run"
    fit(fixture_dir / "train", run, start_config(tiny_run_dir), progress=False)
    return run
