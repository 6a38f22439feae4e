"""Shared pieces of the device tests: product photos from the committed fixture, a fast config,
synthetic scenes with known boxes, and a stand-in embedder (tests/device/fakes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.background import BackgroundDetector
from device.config import Config
from device.crop import object_crop
from device.placement import Action, PlacementTracker
from device.synthetic import SyntheticScene, SyntheticSource, load_photos, make_schedule

from .fakes import FakeEmbedder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "grocery"

# With the stand-in embedder, a product enrolled from scene crops (the recognition crop path) scores
# >= 0.97 against another placement of it, other products <= 0.56 (measured over 4 scenes): 0.8
# separates them. The real model uses its calibrated threshold.
FAKE_THRESHOLD = 0.8


@pytest.fixture(scope="session")
def photos() -> list[tuple[str, np.ndarray]]:
    """One test photo of each of the 8 fixture products."""
    return load_photos(FIXTURE / "test", per_product=1)


def make_config(tmp_path: Path, **sections: dict) -> Config:
    cfg = Config()
    cfg = cfg.replace("detector", learn_frames=10)
    cfg = cfg.replace("placement", stable_frames=4, empty_frames=4)
    cfg = cfg.replace("service", retry_initial_s=0.01, retry_max_s=0.04)
    cfg = cfg.replace("gallery", path=str(tmp_path / "gallery.db"), reload_every_s=0.05)
    cfg = cfg.replace("matcher", threshold=FAKE_THRESHOLD)
    for name, changes in sections.items():
        cfg = cfg.replace(name, **changes)
    return cfg


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def scene_source(
    photos: list[tuple[str, np.ndarray]],
    *,
    seed: int = 0,
    noise: float = 3.0,
    drift: float = 0.15,
    hold: int = 16,
    gap: int = 12,
    lead_in: int = 20,
) -> SyntheticSource:
    placements, n = make_schedule(photos, seed=seed, hold=hold, gap=gap, lead_in=lead_in)
    scene = SyntheticScene(seed=seed, noise=noise, drift=drift, drift_period=300)
    return SyntheticSource(scene, placements, n)


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


def scene_crops(
    photos: list[tuple[str, np.ndarray]], seed: int = 100
) -> list[tuple[str, np.ndarray]]:
    """(product, crop) of each photo placed in a scene, through detection and the crop path."""
    source = scene_source(photos, seed=seed)
    det, tracker, out = BackgroundDetector(), PlacementTracker(), []
    while (frame := source.read()) is not None:
        d = det.detect(frame)
        action = tracker.update(d)
        if d is None and tracker.is_empty:
            det.adapt()
        if action is Action.RECOGNISE and d is not None:
            out.append((source.truth(source.index - 1)[0].label, object_crop(frame, d.box)[0]))
    assert [lb for lb, _ in out] == [lb for lb, _ in photos]
    return out


@pytest.fixture(scope="session")
def enroll_crops(photos: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    return scene_crops(photos)
