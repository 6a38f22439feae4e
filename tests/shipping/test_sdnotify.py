"""The sd_notify protocol against a datagram socket the test opens, as systemd would."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.sdnotify import Notifier, parse_watchdog_interval


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _receive_all(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"prodrec-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    yield sock, "@" + name
    sock.close()


def test_no_socket_means_no_ops() -> None:
    with Notifier(env={}) as n:
        assert not n.enabled and not n.watchdog_enabled
        assert n.ready("up") is False
        assert n.watchdog() is False
        assert n.status("x") is False
        assert n.stopping() is False


def test_watchdog_without_socket_is_disabled() -> None:
    n = Notifier(env={"WATCHDOG_USEC": "1000000"}, pid=os.getpid())
    assert n.watchdog_interval is None
    assert n.watchdog() is False


def test_messages_on_a_path_socket(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with Notifier(env={"NOTIFY_SOCKET": path}) as n:
        assert n.enabled
        assert n.ready("watching camera 0") is True
        assert n.status("3 products\nsecond line") is True
        assert n.extend_timeout(2.5) is True
        assert n.stopping() is True
    assert _receive_all(sock) == [
        "READY=1\nSTATUS=watching camera 0",
        "STATUS=3 products second line",
        "EXTEND_TIMEOUT_USEC=2500000",
        "STOPPING=1",
    ]


def test_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, name = abstract_socket
    with Notifier(env={"NOTIFY_SOCKET": name}) as n:
        assert n.ready() is True
    assert _receive_all(sock) == ["READY=1"]


def test_watchdog_is_rate_limited_to_half_the_timeout(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, path = path_socket
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier(env=env, clock=clock) as n:
        assert n.watchdog_interval == pytest.approx(5.0)
        sent = []
        for _ in range(200):  # 20 s of frames at 10 fps
            sent.append(n.watchdog())
            clock.now += 0.1
        assert n.watchdog(force=True) is True
    pings = _receive_all(sock)
    assert set(pings) == {"WATCHDOG=1"}
    # first call, then every 5 s: t=0, 5, 10, 15 -> 4 pings in 20 s, plus the forced one
    assert sum(sent) == 4
    assert len(pings) == 5


def test_ready_counts_as_the_first_ping(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    with Notifier(env=env, clock=clock) as n:
        n.ready()
        clock.now += 0.5
        assert n.watchdog() is False
        clock.now += 0.6
        assert n.watchdog() is True
    assert _receive_all(sock) == ["READY=1", "WATCHDOG=1"]


def test_watchdog_for_another_pid_is_ignored(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    with Notifier(env=env, pid=4242) as n:
        assert not n.watchdog_enabled
        assert n.watchdog() is False
    assert _receive_all(sock) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_parse_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert parse_watchdog_interval(env, pid=7) == expected


def test_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) as n:
        assert n.ready() is False
        assert n.status("still running") is False
    assert "could not notify systemd" in caplog.text


def test_non_unix_address_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False


def test_malformed_lines_are_rejected(path_socket: tuple[socket.socket, str]) -> None:
    _, path = path_socket
    with Notifier(env={"NOTIFY_SOCKET": path}) as n, pytest.raises(ValueError):
        n.send("READY=1\nWATCHDOG=1")


def test_close_is_idempotent_and_reopens(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    n = Notifier(env={"NOTIFY_SOCKET": path})
    n.close()
    assert n.status("a")
    n.close()
    n.close()
    assert n.status("b")
    n.close()
    assert _receive_all(sock) == ["STATUS=a", "STATUS=b"]


def test_a_full_queue_never_blocks_the_loop(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datagram send blocks while the receiver's queue is full (systemd busy): the watchdog
    ping gives up at once (the next loop iteration retries), other messages after a timeout."""
    import time

    import device.sdnotify

    monkeypatch.setattr(device.sdnotify, "SEND_TIMEOUT_S", 0.05)
    sock, path = path_socket
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    with Notifier(env=env, clock=clock) as n:
        t0 = time.monotonic()
        sent = 0
        for _ in range(100_000):  # the queue holds net.unix.max_dgram_qlen (10 by default)
            clock.now += 1.0
            if not n.watchdog():
                break
            sent += 1
        else:
            pytest.fail("the receiver's queue never filled up")
        assert sent > 0
        assert time.monotonic() - t0 < 5.0
        assert n.status("queue full") is False
        assert len(_receive_all(sock)) == sent  # drained: the next ones go through again
        clock.now += 1.0
        assert n.watchdog() is True


def test_device_run_notifies_systemd(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    """`python -m device run` under a fake systemd: READY, watchdog pings and STOPPING arrive on
    the notify socket, read while the app runs, the way the unit (Type=notify, WatchdogSec)
    expects them."""
    import subprocess
    import sys
    import threading

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def receive() -> None:  # systemd's side: read as messages come
        while not done.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "100000",  # 0.1 s: a ping at most every 50 ms of the loop
        "PYTHONPATH": str(repo),
    }
    env.pop("WATCHDOG_PID", None)
    command = [
        sys.executable,
        "-m",
        "device",
        "run",
        "--source",
        f"synthetic:{repo / 'tests/fixtures/grocery/test'}",
        "--model",
        str(tiny_bundle_dir),
        "--db",
        str(tmp_path / "products.db"),
        "--threshold",
        "0.5",
    ]
    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=repo, timeout=120
        )
    finally:
        done.set()
        reader.join(timeout=5)
        sock.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert messages, "nothing was sent to NOTIFY_SOCKET"
    assert messages[0].startswith("READY=1")
    assert messages[-1].startswith("STOPPING=1")
    assert "WATCHDOG=1" in messages, messages
    assert any(m.startswith("STATUS=") for m in messages)
