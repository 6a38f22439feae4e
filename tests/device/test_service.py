"""The live loop: camera failure and recovery, products added by another process, saved crops."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import Config
from device.errors import CameraError
from device.gallery import Gallery
from device.service import Service
from device.synthetic import Placement, SyntheticScene, SyntheticSource

from .conftest import make_config, scene_source
from .fakes import FakeEmbedder

ROOT = Path(__file__).resolve().parents[2]


class FlakyCamera:
    """Wraps a source: at frame `fail_at` the camera "is unplugged": the read fails and the next
    `failed_opens` attempts to reopen it fail too, then frames come back."""

    finite = True

    def __init__(self, inner: SyntheticSource, fail_at: int, failed_opens: int = 2) -> None:
        self.inner, self.fail_at, self.failed_opens = inner, fail_at, failed_opens
        self.opens = 0
        self.failed = False
        self.pending = 0

    def factory(self) -> FlakyCamera:
        self.opens += 1
        if self.pending:
            self.pending -= 1
            raise CameraError("no camera at /dev/video0")
        return self

    def read(self) -> np.ndarray | None:
        if self.inner.index == self.fail_at and not self.failed:
            self.failed = True
            self.pending = self.failed_opens
            raise CameraError("select() timeout")
        return self.inner.read()

    def close(self) -> None:
        pass


def test_camera_fails_mid_run_and_recovers(tmp_path: Path, photos, enroll_crops) -> None:
    cfg = make_config(tmp_path)
    fake = FakeEmbedder()
    source = scene_source(photos[:4], gap=30)
    placements = source.placements
    flaky = FlakyCamera(source, fail_at=placements[1].end + 2)
    sleeps: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    with Gallery(cfg.gallery.path) as g:
        for label, crop in enroll_crops[:4]:
            g.add_product(label, [(fake.embed(crop), crop)], fake.model_id)
        service = Service(
            cfg,
            source_factory=flaky.factory,
            embedder=fake,
            gallery=g,
            out=io.StringIO(),
            sleep=sleep,
            clock=lambda: now[0],
        )
        stats = service.run()
    assert [e["label"] for e in stats.events] == [p.label for p in placements]
    assert stats.camera_errors == 3 and stats.recoveries == 1 and flaky.opens == 4
    # Exponential back-off, capped at retry_max_s (0.04); sleeps are sliced at 0.5 s.
    assert sleeps == pytest.approx([0.01, 0.02, 0.04], abs=1e-9)


def test_failing_file_source_is_final(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path)
    flaky = FlakyCamera(scene_source(photos[:1]), fail_at=5)
    with Gallery(cfg.gallery.path) as g:
        service = Service(
            cfg, source_factory=flaky.factory, embedder=FakeEmbedder(), gallery=g, retry=False
        )
        with pytest.raises(CameraError):
            service.run()


def scene_service(cfg: Config, g: Gallery, photos: list, out: io.StringIO) -> Service:
    """The service over a synthetic scene of `photos` placed in turn, with a fake embedder."""
    return Service(
        cfg,
        source_factory=lambda: scene_source(photos),
        embedder=FakeEmbedder(),
        gallery=g,
        out=out,
    )


def test_max_frames_and_saved_crops(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path, service={"save_crops": str(tmp_path / "crops")})
    with Gallery(cfg.gallery.path) as g:
        service = scene_service(cfg, g, photos[:3], out=io.StringIO())
        stats = service.run(max_frames=45)  # the first placement (20..36) only
        assert g.events(10) == list(stats.events)  # crop_file kept with the event's row
    assert stats.frames == 45 and len(stats.events) == 1
    saved = Path(stats.events[0]["crop_file"])
    assert saved.parent == tmp_path / "crops" and cv2.imread(str(saved)).shape[0] > 100
    assert stats.events[0]["status"] == "unknown"  # nothing enrolled


def test_event_row_written_after_the_report_and_never_lost_at_stop(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path)
    with Gallery(cfg.gallery.path) as g:
        out = io.StringIO()
        service = scene_service(cfg, g, photos[:2], out=out)
        # Stop on the very frame the first placement is reported: its row is not yet written.
        service.should_stop = lambda: service.stats.n_events >= 1
        stats = service.run()
        assert stats.n_events == 1 and len(out.getvalue().splitlines()) == 1
        rows = g.events(10)
    assert [r["label"] for r in rows] == [stats.events[0]["label"]]  # flushed at stop


class GatedSource:
    """Blocks at frame `gate_at` until `gate` is set (so another process can act meanwhile)."""

    finite = True

    def __init__(self, inner: SyntheticSource, gate_at: int, gate: threading.Event) -> None:
        self.inner, self.gate_at, self.gate = inner, gate_at, gate

    def read(self) -> np.ndarray | None:
        if self.inner.index == self.gate_at:
            assert self.gate.wait(60)
        return self.inner.read()

    def close(self) -> None:
        pass


ENROLL_SCRIPT = """
import sys
import cv2
from device.gallery import Gallery
from tests.device.fakes import FakeEmbedder
crop = cv2.imread(sys.argv[2])
e = FakeEmbedder()
with Gallery(sys.argv[1]) as g:
    g.add_product(sys.argv[3], [(e.embed(crop), crop)], e.model_id)
"""


def test_run_sees_a_product_enrolled_by_another_process(
    tmp_path: Path, photos, enroll_crops
) -> None:
    cfg = make_config(tmp_path, gallery={"reload_every_s": 3600})  # only the pre-recognition check
    label, image = photos[4]
    crop_file = tmp_path / "crop.png"
    cv2.imwrite(str(crop_file), enroll_crops[4][1])
    first = Placement(label, image, (100, 100, 200, 200), 20, 40)
    second = Placement(label, image, (300, 150, 210, 210), 60, 80)
    inner = SyntheticSource(SyntheticScene(seed=7, noise=3.0), [first, second], 90)
    gate = threading.Event()
    out = io.StringIO()
    with Gallery(cfg.gallery.path) as g:
        service = Service(
            cfg,
            source_factory=lambda: GatedSource(inner, 50, gate),
            embedder=FakeEmbedder(),
            gallery=g,
            out=out,
        )
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(stats=service.run()))
        thread.start()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", ENROLL_SCRIPT, cfg.gallery.path, str(crop_file), label],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
        finally:
            gate.set()
            thread.join(60)
    events = result["stats"].events
    assert [e["status"] for e in events] == ["unknown", "known"]
    assert events[1]["label"] == label and events[1]["score"] > 0.9


def test_an_object_gone_since_learning_does_not_block_recognition(
    tmp_path: Path, photos, enroll_crops
) -> None:
    # A product stands there while the background is learnt and is taken away at frame 30: the
    # "hole" it leaves is one (unknown) placement; after relearn_after_frames the scene is the new
    # background and a later placement is recognised.
    cfg = make_config(tmp_path, placement={"relearn_after_frames": 40})
    fake = FakeEmbedder()
    label, image = photos[1]
    there = Placement("initial", photos[0][1], (100, 100, 200, 200), 0, 30)
    later = Placement(label, image, (300, 150, 200, 200), 110, 130)
    source = SyntheticSource(SyntheticScene(seed=12, noise=3.0), [there, later], 140)
    with Gallery(cfg.gallery.path) as g:
        g.add_product(label, [(fake.embed(enroll_crops[1][1]), enroll_crops[1][1])], fake.model_id)
        service = Service(
            cfg, source_factory=lambda: source, embedder=fake, gallery=g, out=io.StringIO()
        )
        events = service.run().events
    assert [e["label"] for e in events] == ["unknown", label]
    assert 110 <= events[1]["frame"] - 1 < 130


def test_a_database_refusing_event_rows_does_not_stop_recognition(
    tmp_path: Path, photos, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from device.errors import GalleryError

    cfg = make_config(tmp_path)
    real = Gallery.log_event
    failing = {"on": True}

    def log_event(self: Gallery, event: object) -> None:
        if failing["on"]:
            raise GalleryError("the disk is full")
        real(self, event)

    # On the class: the event-row sink writes through its own connection.
    monkeypatch.setattr(Gallery, "log_event", log_event)
    with Gallery(cfg.gallery.path) as g:
        out = io.StringIO()
        service = scene_service(cfg, g, photos[:3], out=out)
        seen: dict = {}

        def stop() -> bool:
            if service.stats.n_events < 2:
                return False
            # Both placements recognised and handed to every output while no row can be written.
            assert service.bus.drain(30)
            seen["rows"] = g.events(10)
            failing["on"] = False  # the database works again
            return True

        service.should_stop = stop
        stats = service.run()
        assert stats.n_events == 2 and len(out.getvalue().splitlines()) == 2
        assert seen["rows"] == []
        errors = [r for r in caplog.records if "cannot write events" in r.getMessage()]
        assert len(errors) == 1  # said once, not per event
        # Written at stop, once the database took them again: nothing was lost.
        assert [r["label"] for r in g.events(10)] == [e["label"] for e in stats.events]


def test_saved_crops_beyond_the_limit_are_deleted_oldest_first(tmp_path: Path, photos) -> None:
    crops = tmp_path / "crops"
    cfg = make_config(tmp_path, service={"save_crops": str(crops), "save_crops_keep": 2})
    crops.mkdir()
    (crops / "20000101T000000.000Z_0000001_old.jpg").write_bytes(b"an old crop of the app's")
    (crops / "IMG_0001.jpg").write_bytes(b"someone's photo")  # not the app's: never deleted
    with Gallery(cfg.gallery.path) as g:
        service = scene_service(cfg, g, photos[:3], out=io.StringIO())
        stats = service.run()
    assert stats.n_events == 3
    kept = sorted(p.name for p in crops.iterdir())
    newest = [Path(e["crop_file"]).name for e in list(stats.events)[-2:]]
    assert kept == sorted(["IMG_0001.jpg", *newest])
