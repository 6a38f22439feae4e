"""Background subtraction + placement logic on synthetic scenes with known boxes, replayed through
the folder and video sources and the real service loop (stand-in embedder)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from device.background import BackgroundDetector
from device.camera import FolderSource, OpenCVSource, open_source
from device.config import Config, DetectorConfig
from device.crop import iou, square_box
from device.gallery import Gallery
from device.placement import Action, PlacementTracker
from device.service import Service
from device.synthetic import SyntheticScene, SyntheticSource, write_frames

from .conftest import make_config, scene_source
from .fakes import FakeEmbedder

UNENROLLED = "Red-Bell-Pepper"


def enroll_crops_into(gallery: Gallery, crops, embedder, skip: str = UNENROLLED) -> None:
    for label, image in crops:
        if label != skip:
            gallery.add_product(label, [(embedder.embed(image), image)], embedder.embedding_id)


def run_service(cfg: Config, source, embedder, gallery) -> tuple[list[dict], str]:
    out = io.StringIO()
    service = Service(
        cfg, source_factory=lambda: source, embedder=embedder, gallery=gallery, out=out
    )
    stats = service.run()
    return list(stats.events), out.getvalue()


def check_events(events: list[dict], truth: dict, photos) -> None:
    placements = truth["placements"]
    assert len(events) == len(placements), [e["frame"] for e in events]
    for event, p in zip(events, placements, strict=True):
        frame = event["frame"] - 1
        assert p["start"] <= frame < p["end"], (event, p)
        assert iou(tuple(event["box"]), tuple(p["box"])) > 0.8, (event["box"], p["box"])
        if p["label"] == UNENROLLED:
            assert event["status"] == "unknown" and event["label"] == "unknown", event
        else:
            assert event["status"] == "known" and event["label"] == p["label"], event


@pytest.mark.slow  # long synthetic scenes (the detector's quality, not its mechanics)
@pytest.mark.parametrize("kind", ["folder", "video"])
def test_one_event_per_placement_from_folder_and_video(
    tmp_path: Path, photos, enroll_crops, kind: str
) -> None:
    target = tmp_path / ("frames" if kind == "folder" else "scene.avi")
    write_frames(scene_source(photos, seed=1), target)
    truth_file = target / "truth.json" if kind == "folder" else target.with_suffix(".json")
    truth = json.loads(truth_file.read_text())
    cfg = make_config(tmp_path)
    source = FolderSource(target) if kind == "folder" else OpenCVSource(str(target))
    assert type(open_source(str(target))) is type(source)
    fake = FakeEmbedder()
    with Gallery(cfg.gallery.path) as gallery:
        enroll_crops_into(gallery, enroll_crops, fake)
        events, text = run_service(cfg, source, fake, gallery)
        check_events(events, truth, photos)
        assert [json.loads(line) for line in text.splitlines()] == events
        rows = gallery.events(100)
    assert rows == events  # the events table gives back each JSON line, field for field
    assert fake.calls == len(photos) - 1 + len(events)  # inference only once per placement


@pytest.mark.slow  # long synthetic scenes (the detector's quality, not its mechanics)
@pytest.mark.parametrize(("method", "color"), [("diff", True), ("diff", False), ("mog2", True)])
def test_no_event_from_lighting_drift_and_noise(photos, method: str, color: bool) -> None:
    # Drift of +-30 % over 300 frames and strong sensor noise, nothing placed.
    source = SyntheticSource(
        SyntheticScene(seed=2, noise=6.0, drift=0.3, drift_period=300), [], 450
    )
    det = BackgroundDetector(DetectorConfig(method=method, color=color, learn_frames=10))
    tracker = PlacementTracker()
    detections = 0
    while (frame := source.read()) is not None:
        d = det.detect(frame)
        detections += d is not None
        assert tracker.update(d) is not Action.RECOGNISE
        if d is None:
            det.adapt()
    assert detections == 0


@pytest.mark.parametrize("color", [True, False])
def test_sudden_light_change_is_not_an_object_but_a_placement_is(photos, color: bool) -> None:
    # The light switched on between two frames (+35 %): the cached, gain-scaled background is stale,
    # so the detector must measure the brightness again before calling anything an object.
    scene = SyntheticScene(seed=3, noise=2.0, drift=0.0)
    det = BackgroundDetector(DetectorConfig(color=color, learn_frames=5))
    for i in range(12):
        assert det.detect(scene.render(i)) is None
        det.adapt()
    brighter = [np.clip(scene.render(i).astype(np.float32) * 1.35, 0, 255).astype(np.uint8) for i in range(12, 20)]  # fmt: skip
    for frame in brighter:
        assert det.detect(frame) is None
        det.adapt()
    box = (220, 140, 200, 180)
    placed = np.clip(scene.render(21, [(photos[0][1], box)]).astype(np.float32) * 1.35, 0, 255)
    d = det.detect(placed.astype(np.uint8))
    assert d is not None and iou(d.box, box) > 0.8, d


@pytest.mark.slow  # long synthetic scenes (the detector's quality, not its mechanics)
@pytest.mark.parametrize("method", ["diff", "mog2"])
def test_boxes_under_drift_while_object_present(photos, method: str) -> None:
    # Colour detection (the default); grayscale gives looser boxes under drift (IoU ~0.64 here).
    # A long placement while the light drifts: the background must not absorb the object, and the
    # box must stay right; the drift alone must not trigger after removal.
    label, image = photos[3]
    from device.synthetic import Placement

    box = (200, 120, 220, 220)
    placements = [Placement(label, image, box, 20, 220)]
    source = SyntheticSource(
        SyntheticScene(seed=3, noise=3.0, drift=0.25, drift_period=200), placements, 320
    )
    det = BackgroundDetector(DetectorConfig(method=method, learn_frames=10))
    tracker = PlacementTracker()
    recognised, i = [], 0
    while (frame := source.read()) is not None:
        d = det.detect(frame)
        if 25 <= i < 220:
            assert d is not None and iou(d.box, box) > 0.85, (i, d)
        if i >= 230:
            assert d is None, (i, d)
        if tracker.update(d) is Action.RECOGNISE:
            recognised.append(i)
        if d is None and tracker.is_empty:
            det.adapt()
        i += 1
    assert len(recognised) == 1


def test_roi_ignores_objects_outside(photos) -> None:
    from device.synthetic import Placement

    _, image = photos[0]
    outside = Placement("x", image, (10, 10, 150, 150), 15, 60)  # in the left quarter
    inside = Placement("y", image, (360, 200, 150, 150), 80, 120)
    source = SyntheticSource(SyntheticScene(seed=4, noise=2.0), [outside, inside], 140)
    det = BackgroundDetector(DetectorConfig(learn_frames=10), roi=(0.4, 0.0, 1.0, 1.0))
    seen = []
    while (frame := source.read()) is not None:
        d = det.detect(frame)
        if d is not None:
            seen.append(source.index - 1)
            assert iou(d.box, inside.box) > 0.8
    assert seen and min(seen) >= 80


def test_square_crop_is_clipped_and_square() -> None:
    assert square_box((0, 0, 100, 50), (480, 640), pad=0.1) == (0, 0, 120, 120)
    assert square_box((600, 400, 40, 80), (480, 640), pad=0.0) == (560, 400, 80, 80)
    x, y, w, h = square_box((10, 10, 600, 470), (480, 640), pad=0.2)
    assert w == h == 480 and 0 <= x <= 160 and y == 0
    assert iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(25 / 175)


def test_detection_is_cheap_on_full_frames(photos) -> None:
    # The detector never touches more than the downscaled frame: its state is that small.
    source = scene_source(photos[:1])
    det = BackgroundDetector(DetectorConfig(learn_frames=5))
    for _ in range(6):
        det.detect(source.read())
    ww = DetectorConfig().work_width
    assert det.background is not None and det.background.shape[:2] == (ww * 3 // 4, ww)
    assert np.isfinite(det.background).all()


def test_grayscale_detection_samples_the_pixels_nearest_resize_picks(photos) -> None:
    # The grayscale fast path (strided green channel) must see what INTER_NEAREST + green would.
    import cv2

    frame = scene_source(photos[:1]).read()
    det = BackgroundDetector(DetectorConfig(color=False, blur=1, learn_frames=1))
    det.detect(frame)
    ww = DetectorConfig().work_width
    nearest = cv2.resize(frame, (ww, ww * 3 // 4), interpolation=cv2.INTER_NEAREST)[..., 1]
    assert det.background is not None
    assert np.array_equal(det.background.astype(np.uint8), nearest)
