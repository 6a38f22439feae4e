"""[mqtt]: events to an MQTT broker, with Home Assistant discovery (paho-mqtt, imported here only).

Topics (prefix = [mqtt] topic_prefix, default prodrec/<hostname>):

    <prefix>/available   "online" / "offline", retained; "offline" is also the last will, so the
                         broker marks the device offline when the process dies or the network drops
    <prefix>/events      one JSON message per event, QoS 1, in order
    <prefix>/last        the latest event, retained (a dashboard shows it at once)
    <prefix>/present     "ON" / "OFF", retained: an object is on the tray
    <prefix>/snapshot    the event's crop as JPEG, retained ([mqtt] snapshot = true)
    homeassistant/sensor/<node>/last_product/config         retained discovery configs
    homeassistant/binary_sensor/<node>/object_present/config

An event counts as delivered when the broker acknowledged (PUBACK) its `events` message. paho
keeps a QoS 1 message queued while the connection is down and sends it again after a reconnect,
so a retry of the same event waits for that message instead of publishing a second one.

Threads: paho's network thread runs the callbacks (`_on_*`), which touch only `_state`,
`_acked` (under `_lock`) and `_connected`; the delivery worker calls `send` and owns `_inflight`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from typing import Any

from ..config import MqttConfig
from .base import DeliveryError, Output

logger = logging.getLogger(__name__)

_NODE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_ACK_KEEP_S = 120.0  # acknowledgements nobody waited for are forgotten after this


def node_id(hostname: str) -> str:
    """The hostname as Home Assistant allows it in a discovery topic ([a-zA-Z0-9_-])."""
    return _NODE_CHARS.sub("_", hostname.split(".")[0]).strip("_") or "prodrec"


class MqttOutput(Output):
    kind = "mqtt"

    def __init__(
        self, config: MqttConfig, *, hostname: str | None = None, sw_version: str = ""
    ) -> None:
        self.config = config
        self.name = "mqtt"
        self.wants_crop = config.snapshot
        self.hostname = hostname or socket.gethostname()
        self.node = node_id(self.hostname)
        self.prefix = config.topic_prefix or f"prodrec/{self.node}"
        self.client_id = config.client_id or f"prodrec-{self.node}"
        self.sw_version = sw_version
        self._client: Any = None
        self._lock = threading.Lock()
        self._acked: dict[int, float] = {}  # mid -> when the broker acknowledged it
        self._ack_cond = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._state = "connecting"
        self._failure_logged: str | None = None
        self._present: bool | None = None
        self._inflight: tuple[str, list[int]] | None = None  # event id, mids awaiting PUBACK

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{leaf}"

    def describe(self) -> str:
        scheme = "mqtts" if self.config.tls else "mqtt"
        return f"mqtt ({scheme}://{self.config.host}:{self.config.port}, topics {self.prefix}/#)"

    def state(self) -> str:
        return self._state

    # --- connection ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._client is not None:
            return
        import paho.mqtt.client as mqtt

        c = self.config
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.will_set(self.topic("available"), "offline", qos=1, retain=True)
        if c.username:
            client.username_pw_set(c.username, c.password or None)
        if c.tls:
            try:
                client.tls_set(ca_certs=c.ca_file or None)
            except (OSError, ValueError) as exc:
                raise ValueError(f"[mqtt] ca_file {c.ca_file!r}: {exc}") from exc
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        # connect_async + loop_start: the network thread connects, and reconnects with
        # back-off; a broker that is down at start delays nothing here.
        client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        client.loop_start()

    def close(self) -> None:
        client, self._client = self._client, None
        self._closing.set()
        with self._lock:
            self._ack_cond.notify_all()
        if client is None:
            return
        if self._connected.is_set():
            # An orderly stop: say so (the last will is only for deaths), then disconnect.
            info = client.publish(self.topic("available"), "offline", qos=1, retain=True)
            _wait_published(info, 2.0)
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._state = "stopped"

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._failed(f"the broker refused the connection: {reason}")
            return
        self._failure_logged = None
        self._state = "connected"
        logger.info("mqtt: connected to %s:%d", self.config.host, self.config.port)
        client.publish(self.topic("available"), "online", qos=1, retain=True)
        if self.config.discovery:
            for topic, payload in self.discovery_configs().items():
                client.publish(topic, json.dumps(payload), qos=1, retain=True)
        if self._present is not None:
            client.publish(self.topic("present"), _on_off(self._present), qos=1, retain=True)
        self._connected.set()
        if self.on_ready is not None:
            self.on_ready()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        what = f"cannot reach the broker {self.config.host}:{self.config.port}"
        if self.config.tls:  # paho does not say which: a TLS handshake failure looks the same
            what += " (or the TLS handshake failed: check the port, [mqtt] ca_file and the date)"
        self._failed(what)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        # A refused connection is also followed by a disconnect: keep the refusal's words.
        if self._closing.is_set() or not was_connected:
            return
        self._failed(f"disconnected from the broker ({reason})")

    def _failed(self, what: str) -> None:
        self._connected.clear()
        self._state = f"disconnected: {what}"
        # Once per kind of failure, not once per reconnect attempt.
        if self._failure_logged != what:
            self._failure_logged = what
            logger.warning("mqtt: %s; retrying in the background", what)
        else:
            logger.debug("mqtt: %s", what)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            now = time.monotonic()
            self._acked[mid] = now
            if len(self._acked) > 256:
                for old in [m for m, t in self._acked.items() if now - t > _ACK_KEEP_S]:
                    del self._acked[old]
            self._ack_cond.notify_all()

    # --- publishing ----------------------------------------------------------------------------

    def set_present(self, present: bool) -> None:
        """An object is (or is no longer) on the tray: <prefix>/present, retained. Not queued in
        the outbox: only the current state matters, and it is sent again on every reconnect."""
        if present == self._present:
            return
        self._present = present
        client = self._client
        if client is not None and self._connected.is_set():
            client.publish(self.topic("present"), _on_off(present), qos=1, retain=True)

    def send(self, event: dict[str, Any], crop_jpeg: bytes | None) -> str:
        client = self._client
        if client is None:
            raise DeliveryError("the MQTT output is not started")
        event_id = str(event.get("id", ""))
        t0 = time.monotonic()
        if self._inflight is not None and self._inflight[0] == event_id:
            mids = self._inflight[1]  # paho still holds it: wait for it, never publish twice
        else:
            payload = json.dumps(event)
            infos = [
                client.publish(self.topic("events"), payload, qos=1),
                client.publish(self.topic("last"), payload, qos=1, retain=True),
            ]
            if self.wants_crop and crop_jpeg:
                infos.append(client.publish(self.topic("snapshot"), crop_jpeg, qos=1, retain=True))
            mids = [i.mid for i in infos]
            self._inflight = (event_id, mids)
        deadline = t0 + self.config.timeout_s
        with self._lock:
            while not all(m in self._acked for m in mids):
                left = deadline - time.monotonic()
                if self._closing.is_set():
                    raise DeliveryError("stopping")
                if left <= 0:
                    raise DeliveryError(
                        f"no acknowledgement from the broker within {self.config.timeout_s:g} s "
                        f"({self._state})"
                    )
                self._ack_cond.wait(min(left, 0.5))
            for m in mids:
                del self._acked[m]
        self._inflight = None
        return f"acknowledged by the broker in {(time.monotonic() - t0) * 1000:.0f} ms"

    # --- Home Assistant ------------------------------------------------------------------------

    def discovery_configs(self) -> dict[str, dict[str, Any]]:
        """Home Assistant MQTT discovery: topic -> config (published retained on connect)."""
        device: dict[str, Any] = {
            "identifiers": [f"prodrec_{self.node}"],
            "name": f"prodrec {self.hostname}",
            "manufacturer": "prodrec",
            "model": "product recognition camera",
        }
        if self.sw_version:
            device["sw_version"] = self.sw_version
        common = {
            "availability_topic": self.topic("available"),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": {"name": "prodrec"},
        }
        base = self.config.discovery_prefix
        return {
            f"{base}/sensor/{self.node}/last_product/config": {
                "name": "Last product",
                "unique_id": f"prodrec_{self.node}_last_product",
                "state_topic": self.topic("last"),
                "value_template": "{{ value_json.label }}",
                "json_attributes_topic": self.topic("last"),
                "icon": "mdi:barcode-scan",
                **common,
            },
            f"{base}/binary_sensor/{self.node}/object_present/config": {
                "name": "Object present",
                "unique_id": f"prodrec_{self.node}_object_present",
                "state_topic": self.topic("present"),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "occupancy",
                **common,
            },
        }


def _on_off(present: bool) -> str:
    return "ON" if present else "OFF"


def _wait_published(info: Any, timeout: float) -> None:
    # Not connected any more: then the broker publishes the last will ("offline") itself.
    with contextlib.suppress(RuntimeError, ValueError):
        info.wait_for_publish(timeout)
