"""Real receivers for the output tests: Debian's `mosquitto` on a free loopback port, a paho
subscriber that records what arrives, and an http.server webhook receiver in a thread.

Everything waits by polling with a deadline (`wait_for`), never by a fixed sleep."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None,
    reason="Debian's mosquitto broker is not installed (apt-get install mosquitto; .ci/run does)",
)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something true; that value. Fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A mosquitto broker of the test's own: loopback only, anonymous, persistent (its sessions
    and queued QoS 1 messages survive a stop/start, as a real broker's would with persistence)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        assert MOSQUITTO is not None
        self.folder = folder
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        auth = "allow_anonymous true\n"
        if users:  # only these users, with these passwords
            passwords = folder / "passwords"
            passwords.touch()
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwords), user, password], check=True
                )
            auth = f"allow_anonymous false\npassword_file {passwords}\n"
        # `user`: as root mosquitto would switch to the user "mosquitto", who cannot write here.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n" + auth + "persistence true\n"
            f"persistence_location {folder}/\n"
            f"user {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, what="mosquitto")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: mosquitto saves its persistent state
            proc.wait(10)


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False  # the broker delivering again a QoS 1 message it had sent before

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho client recording every message on `topics`. clean_session=False with a fixed id:
    the broker keeps its subscription and queues QoS 1 messages for it across a broker
    restart."""

    port: int
    topics: tuple[str, ...]
    client_id: str = "prodrec-test-subscriber"
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt

        self._subscribed = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
        )
        c.reconnect_delay_set(min_delay=1, max_delay=1)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            client.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(*args: Any) -> None:
            self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self.lock:
                self.messages.append(
                    Received(msg.topic, msg.payload, msg.qos, msg.retain, bool(msg.dup))
                )

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect("127.0.0.1", self.port, keepalive=10)
        c.loop_start()
        self.client = c
        wait_for(self._subscribed.is_set, what="the test subscriber's subscription")

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def on_prefix(self, prefix: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class WebhookReceiver:
    """An HTTP receiver on a free loopback port: answers each POST with the next of `replies`
    (the last one repeats) and records the requests."""

    def __init__(self, replies: list[int] | None = None, port: int | None = None) -> None:
        self.replies = list(replies or [200])
        self.requests: list[tuple[int, dict[str, str], bytes]] = []  # reply, headers, body
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    code = (
                        receiver.replies.pop(0)
                        if len(receiver.replies) > 1
                        else receiver.replies[0]
                    )
                    receiver.requests.append((code, dict(self.headers), body))
                reply = b"ok" if code < 400 else f"no thanks ({code})".encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def accepted(self) -> list[bytes]:
        with self.lock:
            return [body for code, _, body in self.requests if code < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
