"""[gpio]: a pin pulsed on a known product, another on an unknown or ambiguous one (gpiozero,
imported here only, so machines without GPIO never need it).

A plain event sink, not an outbox output: a beep or a lamp is only worth anything at the moment
of the event, so nothing is kept for later. Pulses run in gpiozero's background thread: a long
pulse never holds the sink's worker.

Threads: `deliver` runs on the sink's worker thread; `close` on the app's.
"""

from __future__ import annotations

import logging
from typing import Any

from ..closing import Closing
from ..config import GpioConfig

logger = logging.getLogger(__name__)

KNOWN = "known"
_OFF_S = 0.01  # gpiozero's blink needs an off time after the single pulse


def event_status(event: Any) -> str:
    """The status ("known", "unknown", "ambiguous") of an Event or of its dict."""
    if isinstance(event, dict):
        return str(event.get("status", ""))
    return str(getattr(event, "status", ""))


class GpioSink(Closing):
    name = "gpio"

    def __init__(self, config: GpioConfig, *, pin_factory: Any = None) -> None:
        try:
            from gpiozero import DigitalOutputDevice
        except ImportError as exc:
            raise ValueError(
                "[gpio] pins are set but gpiozero is not installed: `pip install gpiozero` "
                "(on Raspberry Pi OS: apt install python3-gpiozero), or empty [gpio] known_pin "
                "and unknown_pin"
            ) from exc
        self.config = config
        self.pulses = {KNOWN: 0, "other": 0}
        self.failed = 0
        self._devices: dict[str, Any] = {}
        try:
            for kind, pin in ((KNOWN, config.known_pin), ("other", config.unknown_pin)):
                if pin:
                    self._devices[kind] = DigitalOutputDevice(
                        pin,
                        active_high=config.active_high,
                        initial_value=False,
                        pin_factory=pin_factory,
                    )
        except Exception as exc:  # gpiozero raises its own errors for a busy or missing pin
            self.close()
            raise ValueError(f"[gpio]: cannot use the pin: {exc}") from exc

    def describe(self) -> str:
        pins = ", ".join(
            f"{key} {pin}"
            for key, pin in (
                ("known", self.config.known_pin),
                ("unknown/ambiguous", self.config.unknown_pin),
            )
            if pin
        )
        return f"gpio ({pins})"

    def deliver(self, event: Any, crop_bgr: Any = None) -> None:
        self.pulse(KNOWN if event_status(event) == KNOWN else "other")

    def pulse(self, kind: str) -> bool:
        """Pulse the pin of `kind` ("known" or "other"); False when none is configured."""
        device = self._devices.get(kind)
        if device is None:
            return False
        ms = self.config.known_ms if kind == KNOWN else self.config.unknown_ms
        try:
            device.blink(on_time=ms / 1000.0, off_time=_OFF_S, n=1, background=True)
        except Exception:  # a GPIO fault must not stop the other sinks: counted, logged
            self.failed += 1
            logger.exception("gpio: cannot pulse the %s pin", kind)
            return False
        self.pulses[kind] += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {"state": "ok", "backlog": 0, "pulses": dict(self.pulses), "failed": self.failed}

    def close(self) -> None:
        devices, self._devices = self._devices, {}
        for device in devices.values():
            device.close()
