"""The outputs inside the running app: the loop's events reach a webhook and an MQTT broker with
the ids of their event rows; the status shows the outputs; presence follows the frame hub."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from device.app import DeviceApp
from device.config import Config, MqttConfig, WebhookConfig
from device.framehub import FrameHub, FrameSnapshot
from device.outputs.presence import PresenceWatcher
from device.outputs.status import StatusWithOutputs

from .brokers import Mosquitto, Subscriber, WebhookReceiver, needs_mosquitto, wait_for
from .conftest import make_config, scene_source
from .fakes import FakeEmbedder


class Notes:
    """A stand-in for the systemd notifier: records the status lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def status(self, text: str) -> bool:
        self.lines.append(text)
        return True

    def ready(self, status: str | None = None) -> bool:
        if status:
            self.lines.append(status)
        return True

    def watchdog(self, *, force: bool = False) -> bool:
        return True

    def stopping(self, status: str | None = None) -> bool:
        return True

    def extend_timeout(self, seconds: float) -> bool:
        return True


def app_config(tmp_path: Path, **changes: Any) -> Config:
    cfg = make_config(tmp_path).replace("outbox", retry_initial_s=0.05, retry_max_s=0.2)
    return dataclasses.replace(cfg, **changes)


def run_scene(app: DeviceApp, photos: list[tuple[str, np.ndarray]], notes: Notes) -> Any:
    return app.run(source_factory=lambda: scene_source(photos), retry=False, notifier=notes)


@needs_mosquitto
def test_loop_events_reach_the_webhook_and_the_broker(
    tmp_path: Path, photos: list[tuple[str, np.ndarray]]
) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    receiver = WebhookReceiver()
    sub = Subscriber(broker.port, ("prodrec/till/#",))
    cfg = app_config(
        tmp_path,
        mqtt=MqttConfig(
            host="127.0.0.1",
            port=broker.port,
            topic_prefix="prodrec/till",
            snapshot=True,
            timeout_s=2.0,
        ),
        webhook=(WebhookConfig(url=receiver.url, secret="k", name="till"),),
    )
    notes = Notes()
    try:
        app = DeviceApp(cfg, embedder_factory=lambda p, n: FakeEmbedder(), out=io.StringIO())
        with app:
            stats = run_scene(app, photos[:3], notes)
            assert stats.n_events == 3
            wait_for(lambda: len(receiver.accepted()) == 3, what="3 webhook deliveries")
            wait_for(lambda: len(sub.on("prodrec/till/events")) == 3, what="3 MQTT events")
            stored = [e.id for e in app.events(limit=10)]
            outputs = app.status()["outputs"]
            assert set(outputs) == {"mqtt", "till"}
            wait_for(lambda: app.status()["outputs"]["till"]["delivered"] == 3, what="marks")
        # The receivers got the events of the rows, in order, each once.
        assert [json.loads(b)["id"] for b in receiver.accepted()] == stored
        assert [m.json()["id"] for m in sub.on("prodrec/till/events")] == stored
        snap = sub.on("prodrec/till/snapshot")
        assert len(snap) == 3 and snap[0].payload[:2] == b"\xff\xd8"  # the crops, as JPEG
        # The scene ends empty: the object is no longer present.
        assert [m.payload for m in sub.on("prodrec/till/present")][-1] == b"OFF"
        assert any("mqtt: connected" in line and "till: ok" in line for line in notes.lines)
    finally:
        sub.close()
        receiver.close()
        broker.stop()


def test_outbox_rows_written_with_the_event_rows(
    tmp_path: Path, photos: list[tuple[str, np.ndarray]]
) -> None:
    # A receiver that is down: the events wait in the outbox, one row per event row.
    cfg = app_config(tmp_path, webhook=(WebhookConfig(url="http://127.0.0.1:9/x", name="down"),))
    with DeviceApp(cfg, embedder_factory=lambda p, n: FakeEmbedder(), out=io.StringIO()) as app:
        run_scene(app, photos[:2], Notes())
        ids = [e.id for e in app.events(limit=10)]
        conn = app.gallery().conn
        owed = [r[0] for r in conn.execute("SELECT event_id FROM outbox ORDER BY seq")]
        assert owed == ids and len(ids) == 2
        # The backlog is as of the worker's last look: it may have read the outbox between the
        # two events' commits, and looks again after its first back-off.
        wait_for(
            lambda: (s := app.status()["outputs"]["down"])["failed"] >= 1 and s["backlog"] == 2,
            what="a failure, with both events in the backlog",
        )


def test_presence_follows_the_frame_hub() -> None:
    hub, seen = FrameHub(), []
    image = np.zeros((4, 4, 3), np.uint8)
    steps = [
        ("learning", []),  # not known yet: nothing said
        ("empty", [False]),
        ("placed", [False, True]),
        ("recognised", [False, True]),  # still present: not said again
        ("empty", [False, True, False]),
    ]
    with PresenceWatcher(hub, seen.append, poll_s=0.05) as w:
        for n, (state, expected) in enumerate(steps, 1):
            hub.publish(FrameSnapshot(n, float(n), image, None, None, state))
            wait_for(lambda e=expected, k=n: w.last_frame >= k and seen == e, what=f"after {state}")


def test_status_line_shows_the_outputs_and_follows_them() -> None:
    notes, now, text = Notes(), [0.0], ["mqtt: connected"]
    status = StatusWithOutputs(notes, lambda: text[0], every_s=2.0, clock=lambda: now[0])
    status.status("last: Banana (0.93)")
    assert notes.lines[-1] == "last: Banana (0.93); mqtt: connected"
    text[0] = "mqtt: disconnected: cannot reach the broker b:1883, 2 queued"
    status.watchdog()  # within every_s: not re-sent yet
    assert len(notes.lines) == 1
    now[0] = 2.5
    status.watchdog()
    assert notes.lines[-1] == "last: Banana (0.93); " + text[0]
    status.watchdog()
    assert len(notes.lines) == 2  # unchanged: not re-sent
