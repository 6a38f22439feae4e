"""The latest frame of the live loop, readable from any thread (a preview, a snapshot), so that
nothing but the loop ever touches the camera.

The loop thread alone calls `publish`; readers call `latest`, `wait_newer` and `fps`. A published
snapshot is never changed afterwards (the loop hands over a frame it no longer writes to), so a
reader may keep it as long as it likes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)  # holds an image: no field-wise ==
class FrameSnapshot:
    number: int  # the loop's frame counter (1 = first frame)
    time: float  # time.monotonic() when captured
    image: np.ndarray  # BGR uint8, never mutated after publish
    roi: Box | None  # region of interest x, y, w, h in pixels (None = the whole frame)
    box: Box | None  # the current detection's box, if any
    state: str  # placement state: "learning", "empty", "placed", "stable", "recognised", ...


class FrameHub:
    """Holds the newest `FrameSnapshot` under a `threading.Condition`."""

    def __init__(self, fps_window: int = 30) -> None:
        self._cond = threading.Condition()
        self._latest: FrameSnapshot | None = None
        self._times: deque[float] = deque(maxlen=max(2, fps_window))

    def publish(self, snap: FrameSnapshot) -> None:
        """Loop thread only. Cheap: stores a reference and wakes the waiting readers."""
        with self._cond:
            self._latest = snap
            self._times.append(snap.time)
            self._cond.notify_all()

    def latest(self) -> FrameSnapshot | None:
        with self._cond:
            return self._latest

    def wait_newer(self, after: int, timeout: float) -> FrameSnapshot | None:
        """The newest snapshot whose number is above `after`, waiting up to `timeout` seconds for
        one; None on timeout (e.g. the camera is failing or the loop stopped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.number <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._latest

    def fps(self) -> float:
        """Frames per second over the last `fps_window` frames (0.0 before two frames)."""
        with self._cond:
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0
