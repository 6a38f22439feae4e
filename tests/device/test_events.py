"""Events through sinks: the Event type, the bus (never blocking the loop), the device's sinks."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from device.errors import GalleryError
from device.events import Event, EventBus
from device.gallery import Gallery
from device.service import Service
from device.sinks import EVENTS_RETRY_MAX_S, CropSink, EventLogSink, StdoutSink

from .conftest import make_config, scene_source
from .fakes import FakeEmbedder


def make_event(i: int = 1, **changes: object) -> Event:
    fields: dict = {
        "id": f"{i:032x}",
        "time": f"2026-01-01T00:00:{i % 60:02d}.000Z",
        "label": "Banana",
        "status": "known",
        "score": 0.91,
        "best": "Banana",
        "runner_up": "Apple",
        "runner_up_score": 0.5,
        "box": (1, 2, 30, 40),
        "crop_box": (0, 0, 44, 44),
        "latency_ms": 12.5,
        "frame": i,
        "model_id": "m" * 64,
    }
    fields.update(changes)
    return Event(**fields)


class Recording:
    def __init__(self, name: str = "rec") -> None:
        self.name = name
        self.events: list[Event] = []
        self.closed = 0

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed += 1


class Raising(Recording):
    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        raise OSError("the broker is down")


class Blocking(Recording):
    """Blocks in `deliver` until `gate` is set (a webhook that never answers)."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__("blocking")
        self.gate = gate

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        assert self.gate.wait(60)
        self.events.append(event)


def test_event_round_trips_through_its_json_line() -> None:
    e = make_event(7, crop_file="/x/y.jpg")
    d = json.loads(e.to_json())
    assert list(d)[:2] == ["id", "time"] and d["box"] == [1, 2, 30, 40]
    assert Event.from_dict(d) == e
    assert "crop_file" not in make_event().to_dict()  # only when a crop was saved
    with pytest.raises(ValueError, match="box"):
        Event.from_dict({**d, "box": [1, 2]})


def test_bus_delivers_in_order_and_counts() -> None:
    rec = Recording()
    with EventBus([rec]) as bus:
        q = bus.subscribe()
        for i in range(20):
            bus.publish(make_event(i))
        assert bus.drain(10)
        assert [e.frame for e in rec.events] == list(range(20))
        assert [q.get_nowait().frame for _ in range(20)] == list(range(20))
        assert bus.stats()["rec"] == {"delivered": 20, "failed": 0, "dropped": 0, "backlog": 0}
    assert rec.closed == 1
    bus.close()  # idempotent
    assert rec.closed == 1


def test_a_raising_sink_is_counted_and_the_others_still_get_every_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec, bad = Recording(), Raising("bad")
    with EventBus([bad, rec]) as bus:
        for i in range(5):
            bus.publish(make_event(i))
        assert bus.drain(10)
        assert len(rec.events) == 5 and bus.stats()["bad"]["failed"] == 5
    assert sum("event output bad failed" in r.getMessage() for r in caplog.records) == 1


def test_a_blocked_sink_never_blocks_publish_and_drops_beyond_its_queue() -> None:
    gate = threading.Event()
    rec, slow = Recording(), Blocking(gate)
    bus = EventBus([rec], close_timeout_s=0.2)
    bus.add(slow, queue_size=2)
    try:
        for i in range(10):
            bus.publish(make_event(i))  # returns at once although `slow` is stuck
        assert not bus.drain(0.2)  # the blocked sink still holds events
        stats = bus.stats()
        assert len(rec.events) == 10  # the other sink got everything meanwhile
        # 1 in deliver + 2 queued at most: the rest were dropped, and every one is accounted for
        assert stats["blocking"]["dropped"] >= 7
        assert stats["blocking"]["dropped"] + stats["blocking"]["backlog"] + 1 == 10
    finally:
        gate.set()
        bus.close()


def test_subscriber_queue_drops_the_oldest_when_full() -> None:
    with EventBus() as bus:
        q = bus.subscribe(maxsize=3)
        for i in range(10):
            bus.publish(make_event(i))
        assert bus.drain(10)
        assert [q.get_nowait().frame for _ in range(3)] == [7, 8, 9]
        bus.unsubscribe(q)
        bus.publish(make_event(11))
        assert bus.drain(10) and q.empty()


def test_stdout_sink_survives_a_closed_pipe() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    sink = StdoutSink(Closed())
    sink.deliver(make_event(), None)  # switches to /dev/null instead of raising
    sink.deliver(make_event(2), None)
    sink.close()


def test_crop_stage_names_the_file_for_every_sink(tmp_path: Path) -> None:
    crops = CropSink(tmp_path / "crops", keep=2)
    rec = Recording()
    crop = np.full((50, 40, 3), 128, np.uint8)
    with EventBus([rec], stages=[crops]) as bus:
        for i in range(3):
            bus.publish(make_event(i + 1), crop)
        assert bus.drain(10)
    files = [e.crop_file for e in rec.events]
    assert all(f is not None for f in files)
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == sorted(
        Path(f).name
        for f in files[-2:]  # type: ignore[arg-type]
    )


def test_event_log_sink_keeps_rows_while_the_database_refuses_them(tmp_path: Path) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.rows: list = []
            self.broken = True

        def log_event(self, event: Event | dict) -> None:
            if self.broken:
                raise GalleryError("disk full")
            self.rows.append(event)

        def close(self) -> None:
            pass

    db = Flaky()
    now = [0.0]
    sink = EventLogSink(db, clock=lambda: now[0])
    sink.deliver(make_event(1), None)
    sink.deliver(make_event(2), None)
    assert db.rows == [] and len(sink.pending) == 2
    db.broken = False
    now[0] += EVENTS_RETRY_MAX_S  # tried again after a back-off (test_retention.py)
    sink.deliver(make_event(3), None)
    assert [e.frame for e in db.rows] == [1, 2, 3] and sink.pending == []


def test_event_log_sink_writes_rows_that_read_back_as_events(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    Gallery(path).close()
    sink = EventLogSink(path)  # its own connection
    sink.deliver(make_event(4, crop_file="/c.jpg"), None)
    sink.close()
    with Gallery(path) as g:
        (row,) = g.events(5)
    assert Event.from_dict(row) == make_event(4, crop_file="/c.jpg")


def test_a_sink_that_raises_or_blocks_does_not_stop_recognition(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path)
    gate = threading.Event()
    out = io.StringIO()
    bus = EventBus(
        [StdoutSink(out), EventLogSink(cfg.gallery.path), Raising("bad")], close_timeout_s=0.2
    )
    slow = Blocking(gate)
    bus.add(slow, queue_size=1)
    with Gallery(cfg.gallery.path) as g:
        try:
            service = Service(
                cfg,
                source_factory=lambda: scene_source(photos[:3]),
                embedder=FakeEmbedder(),
                gallery=g,
                bus=bus,
            )
            # The loop ran to the end while one output raised on each event and another was
            # stuck on the first one.
            assert service.run().n_events == 3
        finally:
            gate.set()
            bus.close()
        assert len(out.getvalue().splitlines()) == 3 and len(g.events(10)) == 3
        assert len(service.stats.events) == 3
        stats = bus.stats()
        assert stats["bad"]["failed"] == 3
        assert stats["blocking"]["dropped"] >= 1
        assert len(slow.events) + stats["blocking"]["dropped"] == 3
