"""[outbox], [mqtt], [[webhook]], [gpio]: --validate-config refuses a bad URL, port or pin, naming
the key; `import device` never needs paho or gpiozero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device.cli import main
from device.config import gpio_pin_number, load_config

GOOD = """
[mqtt]
host = "broker.local"
port = 8883
tls = true
topic_prefix = "shop/till-1"
[gpio]
known_pin = "GPIO17"
unknown_pin = "BOARD13"
[[webhook]]
url = "https://till.example/hook"
secret = "s"
[[webhook]]
url = "http://10.0.0.5:8080/prodrec"
"""


def test_outputs_config_read(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.mqtt.port == 8883 and cfg.mqtt.tls and cfg.gpio.unknown_pin == "BOARD13"
    assert [h.url for h in cfg.webhook] == [
        "https://till.example/hook",
        "http://10.0.0.5:8080/prodrec",
    ]
    assert cfg.webhook[0].secret == "s" and cfg.webhook[1].timeout_s == 10.0


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[mqtt]\nhost = 'b'\nport = 70000\n", ["[mqtt]", "port = 70000", "1..65535"]),
        ("[mqtt]\nhost = 'mqtt://b:1883'\n", ["[mqtt]", "host = 'mqtt://b:1883'"]),
        ("[mqtt]\ntopic_prefix = 'a/#'\n", ["[mqtt]", "topic_prefix", "wildcards"]),
        ("[[webhook]]\nurl = 'till.local/hook'\n", ["[[webhook]] #1", "url = 'till.local/hook'"]),
        ("[[webhook]]\nurl = 'http://h:99999/x'\n", ["[[webhook]] #1", "url"]),
        ("[[webhook]]\nurl = 'ftp://h/x'\n", ["[[webhook]] #1", "url"]),
        ("[[webhook]]\nurl = 'http://h/'\n[[webhook]]\nurl = 'http://h/'\n", ["#2", "name"]),
        ("[[webhook]]\nurl = 'http://h/'\nsecrte = 'x'\n", ["[[webhook]] #1", "secrte"]),
        ("[webhook]\nurl = 'http://h/'\n", ["[[webhook]]"]),
        ("[gpio]\nknown_pin = 'GPIO42'\n", ["[gpio]", "known_pin = 'GPIO42'"]),
        ("[gpio]\nunknown_pin = 'BOARD1'\n", ["[gpio]", "unknown_pin = 'BOARD1'"]),
        ("[gpio]\nknown_pin = 'pin7'\n", ["[gpio]", "known_pin"]),
        ("[gpio]\nknown_pin = '17'\nunknown_pin = 'GPIO17'\n", ["unknown_pin"]),
        ("[gpio]\nknown_pin = 17\n", ["[gpio]", "known_pin must be a string"]),
        ("[outbox]\nmax_age_s = 0\n", ["[outbox]", "max_age_s"]),
    ],
)
def test_validate_config_refuses_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    assert main(["run", "--validate-config", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_validate_config_accepts_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "good.toml"
    p.write_text(GOOD)
    assert main(["outputs", "test", "--validate-config", "--config", str(p)]) == 0
    assert "OK" in capsys.readouterr().out


def test_pin_names() -> None:
    assert gpio_pin_number("GPIO17") == gpio_pin_number("BCM17") == gpio_pin_number("17") == 17
    assert gpio_pin_number("BOARD11") == gpio_pin_number("J8:11") == 17
    assert gpio_pin_number("gpio4") == 4
    assert gpio_pin_number("GPIO28") is None and gpio_pin_number("BOARD2") is None  # 5 V pin


def test_import_device_needs_no_paho_nor_gpiozero() -> None:
    code = (
        "import sys, device, device.outputs, device.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('paho', 'gpiozero')]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
