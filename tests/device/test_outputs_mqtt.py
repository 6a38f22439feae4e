"""[mqtt] against a real broker: Debian's mosquitto, started by the test on a free loopback port
(skipped, saying why, where it is not installed; .ci/run installs it)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.config import Config, MqttConfig
from device.gallery import Gallery
from device.outputs import MqttOutput, Outputs, run_output_test

from .brokers import Mosquitto, Subscriber, needs_mosquitto, wait_for
from .test_outbox import event, write

pytestmark = needs_mosquitto

HOST = "till-1.shop.lan"  # the device's hostname in these tests
PREFIX = "prodrec/till-1"
# Home Assistant's own pattern for discovery topics (homeassistant/components/mqtt/discovery.py,
# TOPIC_MATCHER); a config on any other topic is dropped as "illegal discovery topic".
HA_TOPIC = re.compile(
    r"^homeassistant/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    b.stop()


def mqtt_config(port: int, **changes: object) -> Config:
    cfg = Config().replace("outbox", retry_initial_s=0.05, retry_max_s=0.2)
    return Config(
        outbox=cfg.outbox, mqtt=MqttConfig(host="127.0.0.1", port=port, timeout_s=1.0, **changes)
    )


def outputs_for(cfg: Config, db: Path) -> Outputs:
    o = Outputs(cfg, db, hostname=HOST, sw_version="test")
    o.start()
    return o


def test_events_arrive_in_order_with_qos1(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, (f"{PREFIX}/#",))
    db = tmp_path / "g.db"
    evs = [event(i) for i in range(6)]
    try:
        with Gallery(db) as gallery, outputs_for(mqtt_config(broker.port), db) as outputs:
            for ev in evs:
                write(gallery, outputs, ev)
            wait_for(lambda: len(sub.on(f"{PREFIX}/events")) == 6, what="6 events")
            assert outputs.stats()["mqtt"]["state"] == "connected"
            wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 6, what="6 marked")
            assert outputs.stats()["mqtt"]["backlog"] == 0
        got = sub.on(f"{PREFIX}/events")
        assert [m.json()["id"] for m in got] == [e["id"] for e in evs]
        assert all(m.qos == 1 for m in got)
        assert sub.on(f"{PREFIX}/last")[-1].json() == evs[-1]
        # The orderly stop says offline; it was online before.
        available = [m.payload for m in sub.on(f"{PREFIX}/available")]
        assert available[0] == b"online" and available[-1] == b"offline"
    finally:
        sub.close()
    # A new subscriber gets the retained latest event at once.
    late = Subscriber(broker.port, (f"{PREFIX}/last",), client_id="late")
    try:
        msg = wait_for(lambda: late.on(f"{PREFIX}/last"), what="the retained last event")[0]
        assert msg.retain and msg.json()["id"] == evs[-1]["id"]
    finally:
        late.close()


def test_broker_restart_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, (f"{PREFIX}/events",))
    db = tmp_path / "g.db"
    evs = [event(i) for i in range(7)]
    try:
        with Gallery(db) as gallery, outputs_for(mqtt_config(broker.port), db) as outputs:
            for ev in evs[:2]:
                write(gallery, outputs, ev)
            wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 2, what="2 delivered")
            wait_for(lambda: len(sub.on(f"{PREFIX}/events")) == 2, what="2 received")
            broker.stop()
            for ev in evs[2:]:  # produced while the broker is away
                write(gallery, outputs, ev)
            wait_for(lambda: outputs.stats()["mqtt"]["failed"] >= 1, what="a failed attempt")
            assert outputs.stats()["mqtt"]["delivered"] == 2
            assert outputs.stats()["mqtt"]["backlog"] == 5
            assert "disconnected" in outputs.status_text()
            broker.start()
            wait_for(
                lambda: outputs.stats()["mqtt"]["delivered"] == 7, timeout=20, what="7 delivered"
            )
            wait_for(lambda: len(sub.on(f"{PREFIX}/events")) >= 7, what="7 received")
            # Anything sent twice would have reached the subscriber by the time its own later
            # publish makes the round trip.
            outputs.set_present(False)
            sub2 = Subscriber(broker.port, (f"{PREFIX}/present",), client_id="probe")
            wait_for(lambda: sub2.on(f"{PREFIX}/present"), what="the probe")
            sub2.close()
        received = sub.on(f"{PREFIX}/events")
        firsts: list[str] = []
        for m in received:
            if m.json()["id"] in firsts:
                # QoS 1 between broker and subscriber is at least once: a message the subscriber
                # had not acknowledged when the broker stopped comes again, flagged DUP, from the
                # broker's saved state. A second publish by the device would come without it.
                assert m.dup, f"{m.json()['id']} was published twice"
            else:
                firsts.append(m.json()["id"])
        assert firsts == [e["id"] for e in evs]  # each once, in order
    finally:
        sub.close()


def test_last_will_marks_the_device_offline_when_killed(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, (f"{PREFIX}/available",))
    script = textwrap.dedent(
        f"""
        import sys, time
        from device.config import MqttConfig
        from device.outputs import MqttOutput
        out = MqttOutput(MqttConfig(host="127.0.0.1", port={broker.port}), hostname="{HOST}")
        out.start()
        assert out.wait_connected(10)
        print("connected", flush=True)
        time.sleep(60)
        """
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"connected"
        wait_for(
            lambda: [m.payload for m in sub.on(f"{PREFIX}/available")][-1:] == [b"online"],
            what="online",
        )
        proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will can tell
        proc.wait(10)
        wait_for(
            lambda: [m.payload for m in sub.on(f"{PREFIX}/available")][-1:] == [b"offline"],
            what="the last will",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    # Retained: whoever looks later sees the device offline.
    late = Subscriber(broker.port, (f"{PREFIX}/available",), client_id="late")
    try:
        msg = wait_for(lambda: late.on(f"{PREFIX}/available"), what="retained availability")[0]
        assert msg.retain and msg.payload == b"offline"
    finally:
        late.close()


def test_discovery_configs_are_what_home_assistant_expects(
    tmp_path: Path, broker: Mosquitto
) -> None:
    import jinja2

    db = tmp_path / "g.db"
    with Gallery(db) as gallery, outputs_for(mqtt_config(broker.port), db) as outputs:
        ev = event(1)
        write(gallery, outputs, ev)
        wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 1, what="the event")
        outputs.set_present(True)
        probe = Subscriber(broker.port, (f"{PREFIX}/present",), client_id="probe")
        try:  # the broker has it (retained) before Home Assistant looks
            wait_for(lambda: probe.on(f"{PREFIX}/present"), what="present state")
        finally:
            probe.close()
        # Home Assistant subscribes to homeassistant/# after the configs were published:
        # they must be retained.
        ha = Subscriber(broker.port, ("homeassistant/#", f"{PREFIX}/#"), client_id="home-assistant")
        try:
            configs = wait_for(
                lambda: (m := ha.on_prefix("homeassistant/")) and len(m) == 2 and m,
                what="two discovery configs",
            )
            wait_for(lambda: ha.on(f"{PREFIX}/present") and ha.on(f"{PREFIX}/last"), what="states")
            retained = {m.topic: m for m in ha.messages if m.retain}
        finally:
            ha.close()
    by_component = {}
    for m in configs:
        assert m.retain
        match = HA_TOPIC.match(m.topic)
        assert match, f"Home Assistant would drop {m.topic}"
        by_component[match["component"]] = m.json()
    assert set(by_component) == {"sensor", "binary_sensor"}
    device_ids = set()
    for cfg in by_component.values():
        # The device registry needs a unique_id and the device's identifiers.
        assert cfg["unique_id"] and cfg["device"]["identifiers"] and cfg["device"]["name"]
        device_ids.add(tuple(cfg["device"]["identifiers"]))
        # Availability: the topic carries the payloads the config names.
        assert retained[cfg["availability_topic"]].payload.decode() == cfg["payload_available"]
        assert cfg["payload_not_available"] == "offline"
    assert len(device_ids) == 1  # both entities on one device
    assert len({c["unique_id"] for c in by_component.values()}) == 2
    sensor = by_component["sensor"]
    last = retained[sensor["state_topic"]]
    # Home Assistant renders value_template (Jinja2) with value_json = the state's JSON.
    state = jinja2.Template(sensor["value_template"]).render(value_json=last.json())
    assert state == ev["label"]
    assert sensor["json_attributes_topic"] == sensor["state_topic"]
    binary = by_component["binary_sensor"]
    assert retained[binary["state_topic"]].payload.decode() == binary["payload_on"]
    assert binary["payload_off"] == "OFF" and binary["device_class"] == "occupancy"


def test_unreachable_broker_at_start_then_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path)  # not started yet
    db = tmp_path / "g.db"
    try:
        with Gallery(db) as gallery, outputs_for(mqtt_config(broker.port), db) as outputs:
            ev = event(1)
            write(gallery, outputs, ev)  # the service runs on while the broker is away
            wait_for(lambda: outputs.stats()["mqtt"]["failed"] >= 2, what="retries")
            assert "cannot reach the broker" in outputs.status_text()
            # Logged once (by the connection, and once by the deliveries), however many
            # attempts: a broker away for a night does not fill the journal.
            warned = [r.name for r in caplog.records if r.levelno >= logging.WARNING]
            assert sorted(warned) == ["device.outputs.mqtt", "device.outputs.worker"]
            broker.start()
            wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 1, timeout=20, what="delivery")
    finally:
        broker.stop()


def test_outputs_test_command(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, (f"{PREFIX}/events",))
    try:
        import io

        out = io.StringIO()
        assert run_output_test(mqtt_config(broker.port), out, hostname=HOST)
        assert "mqtt (mqtt://127.0.0.1" in out.getvalue() and "OK, acknowledged" in out.getvalue()
        msg = wait_for(lambda: sub.on(f"{PREFIX}/events"), what="the test event")[0]
        assert msg.json()["test"] is True
    finally:
        sub.close()
    out = io.StringIO()
    assert not run_output_test(mqtt_config(1), out, connect_timeout_s=0.5, hostname=HOST)
    assert "FAILED" in out.getvalue()


def test_topic_prefix_default_and_node_id() -> None:
    out = MqttOutput(MqttConfig(host="x"), hostname="Till #1.shop.lan")
    assert out.prefix == "prodrec/Till_1" and out.client_id == "prodrec-Till_1"
    assert all(HA_TOPIC.match(t) for t in out.discovery_configs())
    assert MqttOutput(MqttConfig(host="x", topic_prefix="shop/a")).topic("last") == "shop/a/last"
    json.dumps(out.discovery_configs())


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients missing")
def test_readme_mosquitto_sub_example(tmp_path: Path, broker: Mosquitto) -> None:
    # README: mosquitto_sub -h broker.local -t 'prodrec/#' -v
    proc = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-t",
            "prodrec/#",
            "-v",
            "-W",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "g.db"
    try:
        with Gallery(db) as gallery, outputs_for(mqtt_config(broker.port), db) as outputs:
            ev = event(1)
            write(gallery, outputs, ev)
            assert proc.stdout is not None
            lines = [proc.stdout.readline().rstrip("\n") for _ in range(3)]
    finally:
        proc.kill()
        proc.wait(5)
    assert f"{PREFIX}/available online" in lines
    line = next(line for line in lines if line.startswith(f"{PREFIX}/events "))
    assert json.loads(line.split(" ", 1)[1])["id"] == ev["id"]


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
def test_wrong_credentials_keep_the_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path, users={"till": "right"})
    broker.start()
    db = tmp_path / "g.db"
    try:
        cfg = mqtt_config(broker.port, username="till", password="Pw-0f-the-t1ll")
        with Gallery(db) as gallery, outputs_for(cfg, db) as outputs:
            write(gallery, outputs, event(1))
            wait_for(lambda: outputs.stats()["mqtt"]["failed"] >= 2, what="retries")
            assert "refused the connection" in outputs.status_text()
            assert outputs.stats()["mqtt"]["backlog"] == 1
        refused = [
            r
            for r in caplog.records
            if r.name == "device.outputs.mqtt" and "refused the connection" in r.getMessage()
        ]
        assert len(refused) == 1 and "Pw-0f-the-t1ll" not in caplog.text  # once; no password
        cfg = mqtt_config(broker.port, username="till", password="right")
        with outputs_for(cfg, db) as outputs:  # fixed config, restarted: the event goes out
            wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 1, what="delivery")
    finally:
        broker.stop()


def test_broker_back_ends_a_long_back_off(tmp_path: Path, broker: Mosquitto) -> None:
    # A back-off of 60 s after the first failure; the reconnect must not wait for it.
    base = mqtt_config(broker.port)
    cfg = base.replace("outbox", retry_initial_s=60.0, retry_max_s=600.0)
    db = tmp_path / "g.db"
    with Gallery(db) as gallery, outputs_for(cfg, db) as outputs:
        wait_for(lambda: outputs.stats()["mqtt"]["state"] == "connected", what="connected")
        broker.stop()
        write(gallery, outputs, event(1))
        wait_for(lambda: outputs.stats()["mqtt"]["failed"] == 1, what="the first failure")
        broker.start()
        wait_for(lambda: outputs.stats()["mqtt"]["delivered"] == 1, timeout=15, what="delivery")
