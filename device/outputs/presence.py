"""Whether an object is on the counter, from the frame hub, for MQTT's <prefix>/present (Home
Assistant's "Object present" binary sensor).

Events only say what was recognised; presence also needs to know when the object was taken away,
which only the placement state of each frame tells. The watcher follows the frame hub
(device/framehub.py) on its own thread and passes each change on (`set_present`); the loop does
nothing for it.

Threads: the watcher's thread reads the hub and calls `set_present`; `close` on the app's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..closing import Closing

logger = logging.getLogger(__name__)

EMPTY = "empty"  # FrameSnapshot.state when nothing is on the counter
LEARNING = "learning"  # the empty scene is being learnt: presence is not known yet


class PresenceWatcher(Closing):
    def __init__(
        self, hub: Any, set_present: Callable[[bool], None], *, poll_s: float = 0.5
    ) -> None:
        self.hub = hub
        self.set_present = set_present
        self.poll_s = poll_s
        self.present: bool | None = None  # written by the watcher's thread only
        self.last_frame = 0  # the number of the last frame looked at (watcher's thread)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        after = -1
        while not self._stop.is_set():
            try:
                snap = self.hub.wait_newer(after, timeout=self.poll_s)
                if snap is None:
                    continue
                after = snap.number
                self.last_frame = after
                if snap.state == LEARNING:
                    continue
                present = snap.state != EMPTY
                if present != self.present:
                    self.present = present
                    self.set_present(present)
            except Exception:  # logged, and the watcher carries on with the next frames
                logger.exception("presence: cannot follow the frames")
                self._stop.wait(self.poll_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.poll_s + 1.0)
