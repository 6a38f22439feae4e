"""Retention: the events table trimmed from its own content (at start and periodically), event rows
retried with back-off while the database refuses them (the event-log sink), no growing list of
saved crops with save_crops_keep = 0 (the crop stage)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device import sinks as sinks_module
from device.errors import GalleryError
from device.events import Event
from device.gallery import Gallery, utc_now
from device.service import RETENTION_EVERY_S, Service
from device.sinks import EVENTS_RETRY_MAX_S, CropSink, EventLogSink

from .conftest import make_config
from .fakes import FakeEmbedder


def log(g: Gallery, n: int, *, days_ago: float = 0.0) -> None:
    when = datetime.now(timezone.utc) - timedelta(days=days_ago)
    ts = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for i in range(n):
        g.log_event({"time": ts, "label": f"e{i}", "status": "unknown"})


def count(g: Gallery) -> int:
    return int(g.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def test_trim_events_keeps_the_newest_and_drops_the_old(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as g:
        log(g, 5, days_ago=40)
        log(g, 20)
        newest = g.events(10)
        assert g.trim_events(10) == 15 and count(g) == 10
        assert g.events(10) == newest
        assert g.trim_events(10) == 0  # nothing more to do
        log(g, 3, days_ago=40)  # rows logged late with an old time (a clock set back)
        assert g.trim_events(0, max_age_days=30) == 3 and count(g) == 10
        assert g.trim_events(0, 0) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class BlankCamera:
    """An empty scene: the loop runs, nothing is ever recognised."""

    finite = True

    def read(self) -> np.ndarray:
        return np.full((120, 160, 3), 90, np.uint8)

    def close(self) -> None:
        pass


def blank_service(cfg: Any, g: Gallery, clock: Clock) -> Service:
    return Service(
        cfg,
        source_factory=BlankCamera,
        embedder=FakeEmbedder(),
        gallery=g,
        out=io.StringIO(),
        clock=clock,
        sleep=lambda s: None,
    )


def test_retention_applies_at_every_start_and_periodically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path, gallery={"max_events": 10})
    clock = Clock()
    with Gallery(cfg.gallery.path) as g:
        # A service restarted after each few events: trimmed at each start, whatever the count
        # of rows this process logged (none).
        for _ in range(3):
            log(g, 8)
            blank_service(cfg, g, clock).run(max_frames=1)
            assert count(g) <= 10
        # While it runs: trimmed again once RETENTION_EVERY_S have passed, not before.
        trims: list[float] = []
        real = g.trim_events
        monkeypatch.setattr(g, "trim_events", lambda *a: trims.append(clock.now) or real(*a))
        svc = blank_service(cfg, g, clock)

        def tick(n: int, step: float) -> None:
            for _ in range(n):
                clock.now += step
                svc._process(BlankCamera().read(), 0.0)

        svc._apply_retention()  # as run() does at start
        log(g, 30)
        tick(10, RETENTION_EVERY_S / 20)
        assert len(trims) == 1 and count(g) == 40
        tick(15, RETENTION_EVERY_S / 20)
        assert len(trims) == 2 and count(g) == 10


def test_retention_off_and_refused_do_not_stop_the_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    off = make_config(tmp_path, gallery={"max_events": 0})
    with Gallery(off.gallery.path) as g:
        log(g, 30)
        blank_service(off, g, clock).run(max_frames=2)
        assert count(g) == 30

        def refuse(*args: object) -> int:
            raise GalleryError("the disk is full")

        monkeypatch.setattr(g, "trim_events", refuse)
        cfg = make_config(tmp_path, gallery={"max_events": 5})
        assert blank_service(cfg, g, clock).run(max_frames=2).frames == 2
    assert any("could not trim the events table" in r.getMessage() for r in caplog.records)


def event(i: int) -> Event:
    return Event.from_dict({"time": utc_now(), "label": f"e{i}", "status": "unknown", "frame": i})


def test_event_rows_are_retried_with_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    with Gallery(tmp_path / "g.db") as g:
        tries: list[float] = []

        def refuse(event: object) -> None:
            tries.append(clock.now)
            raise GalleryError("database is locked")

        real = g.log_event
        monkeypatch.setattr(g, "log_event", refuse)
        sink = EventLogSink(g, clock=clock)
        for i in range(600):  # an event a second for ten minutes
            clock.now += 1.0
            sink.deliver(event(i), None)
        # 1, 2, 4, ... 60 s apart: about 15 tries in ten minutes, not 600.
        assert 10 <= len(tries) <= 20
        gaps = np.diff(tries)
        # Growing, from about 1 s, and capped.
        assert np.all(np.diff(gaps) >= 0) and gaps[0] <= 2.0 and max(gaps) <= EVENTS_RETRY_MAX_S
        assert len(sink.pending) == 600  # none lost meanwhile
        # The database works again: every row is written at the next try, and the wait resets.
        monkeypatch.setattr(g, "log_event", real)
        clock.now += EVENTS_RETRY_MAX_S
        sink.deliver(event(600), None)
        assert sink.pending == [] and len(g.events(1000)) == 601
        assert [e["label"] for e in g.events(2)] == ["e599", "e600"]
        assert sink._retry_s == sinks_module.EVENTS_RETRY_INITIAL_S
        # Refused again: rows delivered while backing off wait, and close() tries once more.
        monkeypatch.setattr(g, "log_event", refuse)
        n = len(tries)
        sink.deliver(event(601), None)
        sink.deliver(event(602), None)
        assert len(tries) == n + 1 and len(sink.pending) == 2
        monkeypatch.setattr(g, "log_event", real)
        sink.close()
        assert sink.pending == [] and len(g.events(1000)) == 603


def test_keeping_every_saved_crop_keeps_no_list_of_them(tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "20000101T000000.000Z_0000001_old.jpg").write_bytes(b"an old crop of the app's")
    crop = np.full((40, 40, 3), 128, np.uint8)
    keep_all = CropSink(crops, keep=0)
    for i in range(3):
        assert keep_all.prepare(event(i + 10), crop).crop_file is not None
    assert len(keep_all._saved) == 0
    assert len(list(crops.glob("*.jpg"))) == 4  # all kept, the old one too
    # With a limit the list is kept and the oldest pruned, as before.
    keep_two = CropSink(crops, keep=2)
    keep_two.prepare(event(20), crop)
    assert len(keep_two._saved) == 2 and len(list(crops.glob("*.jpg"))) == 2
