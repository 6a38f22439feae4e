"""[gpio] with gpiozero's mock pin factory: the right pin pulses on the right events."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from device.config import Config, GpioConfig
from device.outputs import GpioSink, Outputs, run_output_test

from .brokers import wait_for
from .test_outbox import event

mock = pytest.importorskip("gpiozero.pins.mock", reason="gpiozero is not installed")

CFG = GpioConfig(known_pin="GPIO17", unknown_pin="BOARD13", known_ms=20, unknown_ms=200)


@pytest.fixture
def factory() -> Iterator[Any]:
    f = mock.MockFactory()
    yield f
    f.close()


def levels(pin: Any) -> list[bool]:
    """The pin's successive levels, repeats merged."""
    out: list[bool] = []
    for s in pin.states:
        if not out or bool(s.state) != out[-1]:
            out.append(bool(s.state))
    return out


def pulses(pin: Any) -> int:
    return sum(1 for a, b in zip(levels(pin), levels(pin)[1:], strict=False) if not a and b)


def test_pins_pulse_on_the_right_events(factory: Any) -> None:
    known, other = factory.pin(17), factory.pin(27)  # BOARD13 is BCM 27
    with GpioSink(CFG, pin_factory=factory) as sink:
        sink.deliver(event(1) | {"status": "known"}, None)
        wait_for(lambda: levels(known) == [False, True, False], what="the known pulse")
        assert pulses(other) == 0
        sink.deliver(event(2) | {"status": "unknown"}, None)
        sink.deliver(event(3) | {"status": "known"}, None)
        wait_for(lambda: pulses(other) == 1 and levels(other)[-1] is False, what="unknown pulse")
        wait_for(lambda: pulses(known) == 2 and levels(known)[-1] is False, what="known again")
        sink.deliver(event(4) | {"status": "ambiguous"}, None)
        wait_for(lambda: pulses(other) == 2 and levels(other)[-1] is False, what="ambiguous")
        assert sink.stats()["pulses"] == {"known": 2, "other": 2}
    # Each pin's pulse lasts its own duration (20 ms, 200 ms): the mock pins record when each
    # level began (roughly: the first pulse of each is compared, with a wide margin).
    assert widths(known)[0] < 0.1 < widths(other)[0]


def widths(pin: Any) -> list[float]:
    """How long each high level lasted, in seconds."""
    out, start = [], None
    for s in pin.states:
        if s.state and start is None:
            start = s.timestamp
        elif not s.state and start is not None:
            out.append(s.timestamp - start)
            start = None
    return out


def test_active_low(factory: Any) -> None:
    pin = factory.pin(17)
    with GpioSink(
        GpioConfig(known_pin="17", active_high=False, known_ms=20), pin_factory=factory
    ) as s:
        assert levels(pin)[-1] is True  # idle is high on an active-low pin
        before = len(levels(pin))
        s.deliver(event(1) | {"status": "known"}, None)
        wait_for(lambda: levels(pin)[before - 1 :] == [True, False, True], what="a low pulse")


def test_gpio_is_a_sink_of_outputs_and_in_outputs_test(factory: Any, tmp_path: Any) -> None:
    cfg = Config(gpio=CFG)
    with Outputs(cfg, tmp_path / "g.db", gpio_pin_factory=factory) as outputs:
        assert [s.name for s in outputs.sinks()] == ["gpio"]
        assert outputs.stats()["gpio"]["backlog"] == 0
    out = io.StringIO()
    fresh = mock.MockFactory()
    try:
        assert run_output_test(cfg, out, gpio_pin_factory=fresh)
        assert pulses(fresh.pin(17)) == 1 and pulses(fresh.pin(27)) == 1
    finally:
        fresh.close()
    assert "GPIO17 (known)" in out.getvalue() and "BOARD13 (unknown)" in out.getvalue()
