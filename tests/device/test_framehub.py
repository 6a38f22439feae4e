"""The frame hub: the loop's newest frame, read from other threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from device.framehub import FrameHub, FrameSnapshot
from device.gallery import Gallery
from device.service import Service

from .conftest import make_config, scene_source
from .fakes import FakeEmbedder


def snap(n: int, t: float = 0.0) -> FrameSnapshot:
    return FrameSnapshot(n, t, np.zeros((4, 4, 3), np.uint8), None, None, "empty")


def test_latest_wait_newer_and_fps() -> None:
    hub = FrameHub(fps_window=5)
    assert hub.latest() is None and hub.fps() == 0.0
    assert hub.wait_newer(0, timeout=0.01) is None  # nothing yet: times out
    for n in range(1, 11):
        hub.publish(snap(n, t=n * 0.1))  # 10 frames per second
    latest = hub.latest()
    assert latest is not None and latest.number == 10
    assert hub.wait_newer(5, timeout=0) is latest
    assert hub.wait_newer(10, timeout=0.01) is None
    assert abs(hub.fps() - 10.0) < 1e-6


def test_a_reader_thread_sees_frames_in_order_and_is_woken() -> None:
    hub = FrameHub()
    seen: list[int] = []
    started = threading.Event()

    def reader() -> None:
        last = 0
        started.set()
        while last < 200:
            s = hub.wait_newer(last, timeout=30)
            assert s is not None
            seen.append(s.number)
            last = s.number

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(10)
    for n in range(1, 201):
        hub.publish(snap(n, t=float(n)))
    t.join(30)
    assert not t.is_alive()
    # Readers may skip frames (they get the newest), never go back, and always see the last.
    assert seen == sorted(set(seen)) and seen[-1] == 200


def test_the_loop_publishes_every_frame_with_its_detection(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path)
    states: list[str] = []
    boxes: list = []
    with Gallery(cfg.gallery.path) as g:
        service = Service(
            cfg,
            source_factory=lambda: scene_source(photos[:1]),
            embedder=FakeEmbedder(),
            gallery=g,
        )
        hub = service.hub
        numbers: list[int] = []
        final: dict[str, int] = {}  # the last frame's number, once the loop has stopped

        def reader() -> None:
            last = 0
            # Stops only after the loop has stopped AND the last frame was seen: never mid-way.
            while final.get("n", -1) != last:
                s = hub.wait_newer(last, timeout=0.05)
                if s is None:
                    continue
                numbers.append(s.number)
                states.append(s.state)
                boxes.append(s.box)
                assert s.image.dtype == np.uint8 and s.image.ndim == 3
                last = s.number

        t = threading.Thread(target=reader)
        t.start()
        try:
            stats = service.run()
        finally:
            latest = hub.latest()
            final["n"] = latest.number if latest is not None else 0
            t.join(30)
        assert not t.is_alive()
    assert numbers == sorted(set(numbers)) and numbers[-1] == stats.frames
    assert stats.n_events == 1
    # Once the scene is learnt the hub says so, and shows the product's box while it is there.
    assert states[0] == "learning" or "learning" not in states[1:]
    assert "empty" in states and any(b is not None for b in boxes)
