"""The systemd notify protocol (sd_notify) and its watchdog, in pure standard library.

A service with `Type=notify` tells systemd it is up by sending `READY=1` as a datagram to the
AF_UNIX socket named in `NOTIFY_SOCKET`; with `WatchdogSec=` it must then send `WATCHDOG=1` more
often than every `WATCHDOG_USEC` microseconds or systemd kills and restarts it. Outside systemd
(a terminal, tests, the demo) `NOTIFY_SOCKET` is unset and every call is a no-op, so the app calls
the same methods wherever it runs:

    with Notifier() as notifier:
        notifier.ready("watching the camera")
        while running:
            process_one_frame()
            notifier.watchdog()          # cheap: sends at most every WATCHDOG_USEC / 2
        notifier.stopping()

A failed send is logged, never raised: the app must keep serving, and if the notify socket is
really gone the watchdog restarts the service anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from .closing import Closing

logger = logging.getLogger(__name__)

__all__ = ["SEND_TIMEOUT_S", "Notifier", "parse_watchdog_interval"]

SEND_TIMEOUT_S = 1.0


def parse_watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings systemd expects from process `pid`, or None when disabled.

    systemd sets `WATCHDOG_USEC` (the timeout) and `WATCHDOG_PID` (the process it is meant for:
    a child that inherited the environment must not pet the parent's watchdog). The protocol
    asks for a ping at least every half timeout."""
    usec_text = env.get("WATCHDOG_USEC", "").strip()
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "").strip()
    if pid_text:
        try:
            watchdog_pid = int(pid_text)
        except ValueError:
            logger.warning("ignoring the watchdog: WATCHDOG_PID=%r is not an integer", pid_text)
            return None
        if watchdog_pid != pid:
            return None
    return usec / 1_000_000 / 2


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET -> an AF_UNIX address. '@name' is an abstract socket (leading NUL byte)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd >= 254 may also hand out "vsock:CID:PORT" (VMs); a Pi service never gets one.
    return None


class Notifier(Closing):
    """Sends sd_notify messages to systemd; every method is a no-op when not run by systemd.

    `env` (default: os.environ), `pid` (default: os.getpid()) and `clock` (default:
    time.monotonic) are parameters so tests can drive the protocol without systemd.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        self._clock = clock
        self._sock: socket.socket | None = None
        self._address: str | bytes | None = None
        self._last_ping: float | None = None
        self._send_failed = False
        self.watchdog_interval = parse_watchdog_interval(env, os.getpid() if pid is None else pid)

        notify_socket = env.get("NOTIFY_SOCKET", "")
        if notify_socket:
            self._address = _socket_address(notify_socket)
            if self._address is None:
                logger.warning(
                    "NOTIFY_SOCKET=%r is not a unix socket; not notifying systemd", notify_socket
                )
        if self._address is None:
            self.watchdog_interval = None  # nobody to ping

    # --- state --------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when run by systemd with a notify socket."""
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.watchdog_interval is not None

    # --- messages -----------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (Type=notify services count as started from here)."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(_status_line(status))
        sent = self.send(*lines)
        if sent:
            self._last_ping = self._clock()  # READY counts as a sign of life
        return sent

    def watchdog(self, *, force: bool = False) -> bool:
        """Pet the watchdog; sends only when half the watchdog timeout has passed (or `force`).

        Cheap enough to call on every frame. Returns True when a message was sent."""
        if self.watchdog_interval is None:
            return False
        now = self._clock()
        if (
            not force
            and self._last_ping is not None
            and now - self._last_ping < self.watchdog_interval
        ):
            return False
        sent = self.send("WATCHDOG=1", wait=False)
        if sent:
            self._last_ping = now
        return sent

    def status(self, text: str) -> bool:
        """A one-line status shown by `systemctl status`."""
        return self.send(_status_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """The service is shutting down cleanly."""
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.send(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (e.g. while re-embedding a product database)."""
        usec = max(1, int(seconds * 1_000_000))
        return self.send(f"EXTEND_TIMEOUT_USEC={usec}")

    def send(self, *lines: str, wait: bool = True) -> bool:
        """Send raw `KEY=value` lines as one datagram. False (and a log line) if it failed.

        A datagram socket blocks while the receiver's queue is full (systemd busy, or a test
        that reads late): with `wait` the send gives up after SEND_TIMEOUT_S, without it at
        once (watchdog pings: the next loop iteration simply tries again)."""
        if self._address is None or not lines:
            return False
        for line in lines:
            if "\n" in line or "=" not in line:
                raise ValueError(f"a notify line is one KEY=value line, got {line!r}")
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT_S if wait else 0.0)
            self._sock.sendto(payload, self._address)
        except OSError as exc:  # includes TimeoutError and BlockingIOError
            # First failure at warning level, repeats at debug: the loop calls this every frame.
            log = logger.debug if self._send_failed else logger.warning
            log("could not notify systemd (%s): %s", lines[0], exc or type(exc).__name__)
            self._send_failed = True
            return False
        self._send_failed = False
        return True

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; idempotent. Later calls reopen it on demand."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _status_line(text: str) -> str:
    # The protocol is newline-separated: a multi-line status would be read as other fields.
    return "STATUS=" + " ".join(str(text).split())
