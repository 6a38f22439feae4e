"""What every output is: a small class that sends one event somewhere and says how it went."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..closing import Closing


class DeliveryError(Exception):
    """A delivery that failed for now (receiver unreachable, 5xx, no acknowledgement): retried."""


class RejectedError(Exception):
    """The receiver refused the event for good (HTTP 4xx): not retried, logged with the reply."""


class Output(Closing):
    """A receiver of events that must not lose any: delivered from the outbox by its own
    DeliveryWorker (device/outputs/worker.py).

    Threads: `start`, `close` run on the thread that owns the Outputs (the app's); `send` runs
    on the output's delivery worker only; `state` may be called from any thread."""

    kind: ClassVar[str] = ""
    name: str = ""  # unique among the outputs, and the outbox's key: keep it stable
    wants_crop: bool = False  # the outbox keeps the event's crop (JPEG) for this output
    # Set by the delivery worker: an output that learns its receiver is back (MQTT: connected)
    # calls it to end the worker's back-off early. Any thread.
    on_ready: Callable[[], None] | None = None

    def start(self) -> None:
        """Begin connecting in the background: never blocks on, nor fails for, a receiver that
        is down (it is retried; the first failure is logged once)."""

    def send(self, event: dict[str, Any], crop_jpeg: bytes | None) -> str:
        """Deliver one event (the JSON object receivers get); what happened, e.g. "HTTP 200".

        Raises DeliveryError (retried) or RejectedError (given up)."""
        raise NotImplementedError

    def state(self) -> str:
        """A few words for the status line: "connected", "disconnected: ...", "ok"..."""
        return "ok"

    def describe(self) -> str:
        """Where the events go, for `outputs test` (never a password or secret)."""
        return self.name
