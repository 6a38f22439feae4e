"""The systemd unit: the settings the issue asks for, and `systemd-analyze verify` on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "prodrec.service"
DROPIN = SYSTEMD_DIR / "restart-backoff.conf"
VENV_PYTHON = "/opt/prodrec/venv/bin/python"
CONFIG = "/etc/prodrec/config.toml"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat, e.g. DeviceAllow)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_notify_watchdog_and_restart(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert 5 <= seconds(one(unit, "Service", "WatchdogSec")) <= 120
    assert one(unit, "Service", "Restart") == "on-failure"
    restart_sec = seconds(one(unit, "Service", "RestartSec"))
    assert restart_sec >= 1
    # A crash loop ends in "failed": the burst must be reachable within the interval.
    interval = seconds(one(unit, "Unit", "StartLimitIntervalSec"))
    burst = int(one(unit, "Unit", "StartLimitBurst"))
    assert burst * restart_sec < interval
    assert "StartLimitIntervalSec" not in unit["Service"]  # ignored there by modern systemd


def test_runs_the_device_app_with_a_validated_config(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    pre = one(unit, "Service", "ExecStartPre").split()
    start = one(unit, "Service", "ExecStart").split()
    assert pre == [VENV_PYTHON, "-m", "device", "run", "--validate-config", "--config", CONFIG]
    assert start == [VENV_PYTHON, "-m", "device", "run", "--config", CONFIG]
    assert one(unit, "Service", "WorkingDirectory") == "/opt/prodrec/app"
    assert "PYTHONUNBUFFERED=1" in one(unit, "Service", "Environment").split()


def test_user_directories_and_logs(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Service", "User") == "prodrec"
    assert one(unit, "Service", "Group") == "prodrec"
    assert one(unit, "Service", "SupplementaryGroups") == "video"
    assert one(unit, "Service", "StateDirectory") == "prodrec"
    assert one(unit, "Service", "ConfigurationDirectory") == "prodrec"
    assert one(unit, "Service", "StandardOutput") == "journal"
    assert one(unit, "Service", "StandardError") == "journal"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_sandbox(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ReadWritePaths") == "/var/lib/prodrec"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = unit["Service"]["DeviceAllow"]
    # /dev/video* and /dev/v4l-subdev* (video4linux), /dev/media* (media), /dev/dma_heap/*.
    assert sorted(allowed) == ["char-dma_heap rw", "char-media rw", "char-video4linux rw"]
    # PrivateDevices=yes would hide the camera nodes altogether.
    assert unit["Service"].get("PrivateDevices", ["no"]) == ["no"]


def test_backoff_dropin_only_adds_growing_delays() -> None:
    dropin = parse_unit(DROPIN.read_text())
    assert set(dropin) == {"Service"}
    assert set(dropin["Service"]) == {"RestartSteps", "RestartMaxDelaySec"}


# --- systemd-analyze verify ------------------------------------------------------------------


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian package 'systemd'; .ci/run installs it in CI)"
        )
    return exe


def _systemd_version(exe: str) -> int:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))  # type: ignore[union-attr]


def _render(tmp_path: Path, unit_text: str, dropin: bool = False) -> Path:
    """The unit with its venv python replaced by an executable that exists here (verify checks
    that ExecStart's binary exists), in a directory of its own with an optional drop-in."""
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    path = tmp_path / "prodrec.service"
    path.write_text(unit_text.replace(VENV_PYTHON, str(python)))
    if dropin:
        (tmp_path / "prodrec.service.d").mkdir()
        shutil.copy(DROPIN, tmp_path / "prodrec.service.d" / DROPIN.name)
    return path


def _verify(exe: str, path: Path) -> tuple[int, list[str]]:
    # The trailing ':' keeps the default unit path (targets like multi-user.target) after ours.
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{path.parent}:", "SYSTEMD_LOG_COLOR": "0"}
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    # Only complaints about our files count (a CI container may have odd units of its own).
    lines = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "prodrec" in line or str(path.parent) in line
    ]
    return proc.returncode, lines


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    code, complaints = _verify(exe, _render(tmp_path, UNIT.read_text()))
    assert code == 0 and complaints == [], complaints


def test_systemd_analyze_verify_with_backoff_dropin(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    code, complaints = _verify(exe, _render(tmp_path, UNIT.read_text(), dropin=True))
    assert code == 0
    if _systemd_version(exe) >= 254:
        assert complaints == []
    else:
        # systemd < 254 (Bookworm): the keys are unknown there, which is why install.sh adds
        # the drop-in only on systemd >= 254. Nothing else may be reported.
        assert len(complaints) == 2
        assert all("Unknown key" in c for c in complaints)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The checks above can fail: a bad value and a missing binary are both reported."""
    exe = _systemd_analyze()
    (tmp_path / "bad").mkdir()
    broken = UNIT.read_text().replace("DevicePolicy=closed", "DevicePolicy=closd")
    _, complaints = _verify(exe, _render(tmp_path / "bad", broken))
    assert any("device policy" in c.lower() for c in complaints), complaints

    path = tmp_path / "missing" / "prodrec.service"
    path.parent.mkdir()
    path.write_text(UNIT.read_text().replace(VENV_PYTHON, "/nonexistent/python"))
    code, complaints = _verify(exe, path)
    assert code != 0 and any("/nonexistent/python" in c for c in complaints), complaints
