"""Where events go besides stdout and the events table (README "Integrations").

    mqtt.py     [mqtt]        MqttOutput     durable (outbox)   paho-mqtt, imported in start()
    webhook.py  [[webhook]]   WebhookOutput  durable (outbox)   standard library
    gpio.py     [gpio]        GpioSink       an event sink      gpiozero, imported in __init__

`Outputs` is the set configured for one process. MQTT and webhooks must not lose an event, so
they are owed each event through the outbox (device/outbox.py): the event log calls `enqueue`
inside the transaction of the event row and `notify` after its commit; each output's
DeliveryWorker then delivers from there. GPIO is only worth anything at the moment of the event:
it is a plain sink on the event bus (`sinks()`).

Threads: `enqueue` runs on the event log's thread (inside its transaction); `notify`, `stats`,
`status_text` and `set_present` from any thread; construction, `start` and `close` on the
app's thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .. import outbox
from ..closing import Closing
from ..config import Config
from ..errors import GalleryError
from .base import DeliveryError, Output, RejectedError
from .gpio import GpioSink
from .mqtt import MqttOutput
from .webhook import WebhookOutput
from .worker import DeliveryWorker

logger = logging.getLogger(__name__)

__all__ = [
    "DeliveryError",
    "GpioSink",
    "MqttOutput",
    "Output",
    "Outputs",
    "RejectedError",
    "WebhookOutput",
    "build_outputs",
    "run_output_test",
]

# The durable outputs, by config section: each factory gives the outputs its section asks for.
OUTPUT_KINDS: dict[str, Callable[[Config, str | None, str], list[Output]]] = {
    "mqtt": lambda cfg, host, sw: (
        [MqttOutput(cfg.mqtt, hostname=host, sw_version=sw)] if cfg.mqtt.host else []
    ),
    "webhook": lambda cfg, host, sw: [WebhookOutput(h) for h in cfg.webhook],
}


def build_outputs(
    config: Config, *, hostname: str | None = None, sw_version: str = ""
) -> list[Output]:
    """The durable outputs the config asks for (not started)."""
    return [o for make in OUTPUT_KINDS.values() for o in make(config, hostname, sw_version)]


def gpio_wanted(config: Config) -> bool:
    return bool(config.gpio.known_pin or config.gpio.unknown_pin)


class Outputs(Closing):
    """The configured outputs of one process, their delivery workers and the GPIO sink."""

    def __init__(
        self,
        config: Config,
        db_path: str | Path,
        *,
        outputs: Sequence[Output] | None = None,
        gpio_pin_factory: Any = None,
        hostname: str | None = None,
        sw_version: str = "",
        clock: Callable[[], float] = time.time,
        idle_s: float = 5.0,
    ) -> None:
        self.config = config
        self.db_path = Path(db_path)
        self.outputs: list[Output] = (
            list(outputs)
            if outputs is not None
            else build_outputs(config, hostname=hostname, sw_version=sw_version)
        )
        self.owed = [outbox.Owed(o.name, o.wants_crop) for o in self.outputs]
        self.workers: dict[str, DeliveryWorker] = {}
        self.gpio: GpioSink | None = None
        self._started = False
        self._prepare_outbox()
        self.workers = {
            o.name: DeliveryWorker(o, self.db_path, config.outbox, clock=clock, idle_s=idle_s)
            for o in self.outputs
        }
        if gpio_wanted(config):
            self.gpio = GpioSink(config.gpio, pin_factory=gpio_pin_factory)

    def _prepare_outbox(self) -> None:
        from ..gallery import Gallery

        # The product schema first (created or migrated as any command would): the outbox is a
        # table of the product database, never the first table of a new file.
        Gallery(self.db_path, check=False).close()
        try:
            conn = outbox.connect(self.db_path)
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open the outbox in {self.db_path}: {exc}") from exc
        try:
            outbox.ensure_schema(conn)
            dropped = outbox.drop_orphans(
                conn, [o.name for o in self.outputs], self.config.outbox.max_age_s
            )
            for name, n in dropped.items():
                logger.warning(
                    "outbox: dropped %d undelivered event(s) older than [outbox] max_age_s of "
                    "%r, which is no longer configured",
                    n,
                    name,
                )
        except sqlite3.Error as exc:
            raise GalleryError(
                f"cannot prepare the outbox in {self.db_path}: {exc}; check that the product "
                "database is writable"
            ) from exc
        finally:
            conn.close()

    def start(self) -> None:
        """Connect (in the background: a receiver that is down delays nothing) and deliver."""
        if self._started:
            return
        self._started = True
        for o in self.outputs:
            o.start()
        for w in self.workers.values():
            w.start()
        if self.outputs or self.gpio:
            logger.info(
                "outputs: %s",
                ", ".join([o.describe() for o in self.outputs] + self._gpio_described()),
            )

    def _gpio_described(self) -> list[str]:
        return [self.gpio.describe()] if self.gpio else []

    # --- called by the event log ---------------------------------------------------------------

    def crop_jpeg(self, crop_bgr: np.ndarray) -> bytes | None:
        """The crop as the outbox keeps it (JPEG); None when no output sends crops."""
        if not any(o.wants_crop for o in self.owed):
            return None
        from ..gallery import encode_jpeg

        return encode_jpeg(crop_bgr)

    def enqueue(
        self, conn: sqlite3.Connection, event: dict[str, Any], crop_jpeg: bytes | None = None
    ) -> int:
        """Owe `event` (its JSON object, with its stable "id") to every durable output; runs
        inside the caller's transaction, so it is committed with the event row or not at all."""
        if not self.owed:
            return 0
        return outbox.enqueue(conn, self.owed, str(event["id"]), json.dumps(event), crop_jpeg)

    def notify(self) -> None:
        """Rows were committed: the workers look now."""
        for w in self.workers.values():
            w.wake()

    # --- state ---------------------------------------------------------------------------------

    def sinks(self) -> list[Any]:
        """The event-bus sinks among the outputs (GPIO)."""
        return [self.gpio] if self.gpio is not None else []

    def set_present(self, present: bool) -> None:
        for o in self.outputs:
            if isinstance(o, MqttOutput):
                o.set_present(present)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per output: state, backlog (events owed), delivered, failed attempts, rejected,
        expired, last error; for the status line and the web status."""
        out: dict[str, dict[str, Any]] = {}
        for o in self.outputs:
            worker = self.workers[o.name]
            s = worker.stats()
            # The output's own words ("disconnected: cannot reach the broker ..."), unless it
            # looks fine while its deliveries fail (e.g. no acknowledgement).
            s["state"] = o.state()
            if worker.failing and s["state"] in ("ok", "connected"):
                s["state"] = f"failing ({worker.last_error})"
            out[o.name] = s
        if self.gpio is not None:
            out[self.gpio.name] = self.gpio.stats()
        return out

    def status_text(self) -> str:
        """One line: each output's state and backlog ("" when there are none)."""
        parts = []
        for name, s in self.stats().items():
            text = f"{name}: {s['state']}"
            if s.get("backlog"):
                text += f", {s['backlog']} queued"
            if s.get("expired"):
                text += f", {s['expired']} given up"
            parts.append(text)
        return "; ".join(parts)

    def close(self) -> None:
        workers, self.workers = self.workers, {}
        for w in workers.values():
            w.stop()
        for o in self.outputs:
            o.close()  # unblocks a worker waiting for an acknowledgement
        for w in workers.values():
            w.close()
        self.outputs = []
        self.owed = []
        gpio, self.gpio = self.gpio, None
        if gpio is not None:
            gpio.close()


# --- `python -m device outputs test` -------------------------------------------------------------


def make_test_event(model_id: str = "test") -> dict[str, Any]:
    """A recognisable test event, shaped like every event ("test": true marks it)."""
    from ..gallery import utc_now

    return {
        "id": uuid.uuid4().hex,
        "time": utc_now(),
        "label": "prodrec test event",
        "status": "known",
        "score": 1.0,
        "best": "prodrec test event",
        "runner_up": None,
        "runner_up_score": None,
        "box": [0, 0, 1, 1],
        "crop_box": [0, 0, 1, 1],
        "latency_ms": 0.0,
        "frame": 0,
        "model_id": model_id,
        "test": True,
    }


def run_output_test(
    config: Config,
    out: TextIO,
    *,
    connect_timeout_s: float = 10.0,
    hostname: str | None = None,
    gpio_pin_factory: Any = None,
) -> bool:
    """Send one test event through every configured output, directly (not through the outbox),
    and print what happened to each; True when all of them took it."""
    outputs = build_outputs(config, hostname=hostname)
    if not outputs and not gpio_wanted(config):
        out.write(
            "no outputs configured (set [mqtt] host, add [[webhook]] tables or [gpio] pins)\n"
        )
        return True
    event = make_test_event()
    ok = True
    for o in outputs:
        try:
            o.start()
            if isinstance(o, MqttOutput) and not o.wait_connected(connect_timeout_s):
                raise DeliveryError(f"not connected after {connect_timeout_s:g} s: {o.state()}")
            what = o.send(event, None)
            out.write(f"{o.describe()}: OK, {what}\n")
        except (DeliveryError, RejectedError, ValueError) as exc:
            ok = False
            out.write(f"{o.describe()}: FAILED: {exc}\n")
        finally:
            o.close()
    if gpio_wanted(config):
        try:
            with GpioSink(config.gpio, pin_factory=gpio_pin_factory) as gpio:
                pulsed = [k for k in ("known", "other") if gpio.pulse(k)]
                # The pulses run in the background: let them finish before the pins close.
                time.sleep(max(config.gpio.known_ms, config.gpio.unknown_ms) / 1000.0 + 0.05)
            names = {"known": config.gpio.known_pin, "other": config.gpio.unknown_pin}
            out.write(
                f"{gpio.describe()}: OK, pulsed "
                + ", ".join(
                    f"{names[k]} ({'known' if k == 'known' else 'unknown'})" for k in pulsed
                )
                + "\n"
            )
        except ValueError as exc:
            ok = False
            out.write(f"gpio: FAILED: {exc}\n")
    return ok
