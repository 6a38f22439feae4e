"""The live page's two feeds: the camera image (JPEG, encoded only on request) and the
recognitions (fanned out to the page's Server-Sent Event streams).

No web framework here: `FrameEncoder` is called from the web server's worker threads and
`LiveFeed` is an `EventSink` on the device's EventBus (its `deliver` runs on the bus's worker
thread for this sink); listeners are asyncio queues of the web server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ROI_COLOUR = (0, 215, 255)  # BGR amber
BOX_COLOUR = (80, 200, 60)  # BGR green
TEXT_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class EncodedFrame:
    number: int
    state: str
    jpeg: bytes


class FrameEncoder:
    """Encodes the hub's newest frame (downscaled, ROI and detection box drawn) to JPEG.

    Called by request handlers only, so nothing is encoded while nobody watches; the last
    encoding is reused while the hub has no newer frame, so several viewers cost one encoding.
    Thread-safe (a lock around the one cached result).
    """

    def __init__(self, hub: Any, *, max_width: int, quality: int) -> None:
        self.hub = hub
        self.max_width = max_width
        self.quality = quality
        self._lock = threading.Lock()
        self._last: EncodedFrame | None = None
        self.encoded = 0  # how many frames were encoded (for the benchmark and tests)

    def latest(self) -> EncodedFrame | None:
        snap = self.hub.latest()
        if snap is None:
            return None
        with self._lock:
            if self._last is not None and self._last.number == snap.number:
                return self._last
            jpeg = encode_snapshot(snap, self.max_width, self.quality)
            self._last = EncodedFrame(snap.number, snap.state, jpeg)
            self.encoded += 1
            return self._last


def encode_snapshot(snap: Any, max_width: int, quality: int) -> bytes:
    import cv2

    image: np.ndarray = snap.image
    h, w = image.shape[:2]
    scale = min(1.0, max_width / w)
    if scale < 1.0:
        out = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    else:
        out = image.copy()  # the snapshot's image is shared: never draw on it
    thick = max(2, round(2 * scale))  # visible after JPEG and shrinking

    def rect(box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
        x, y, bw, bh = (round(v * scale) for v in box)
        cv2.rectangle(out, (x, y), (x + bw - 1, y + bh - 1), colour, thick)

    if snap.roi is not None:
        rect(snap.roi, ROI_COLOUR)
    if snap.box is not None:
        rect(snap.box, BOX_COLOUR)
    label = f"#{snap.number} {snap.state}"
    cv2.putText(out, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, TEXT_COLOUR, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("OpenCV could not encode the live image")
    return buf.tobytes()


def crop_thumbnail(crop_bgr: np.ndarray, side: int = 160, quality: int = 80) -> bytes:
    import cv2

    h, w = crop_bgr.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        crop_bgr = cv2.resize(
            crop_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(".jpg", crop_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""


class LiveFeed:
    """An EventSink that keeps the last recognitions with a small JPEG of their crop and pushes
    each to the page's open event streams.

    It is a sink, not an `EventBus.subscribe()` queue, because a sink receives the crop itself:
    the page shows each recognition's crop even when [service] save_crops is off.
    `deliver` runs on the bus's worker thread for this sink; `listen`/`unlisten` and the queues
    belong to the web server's asyncio loop (handed over with call_soon_threadsafe).
    """

    name = "web"

    def __init__(self, keep: int = 50) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[dict[str, Any], bytes]] = OrderedDict()
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    # --- the bus's side --------------------------------------------------------------------------

    def deliver(self, event: Any, crop_bgr: np.ndarray | None) -> None:
        item = event.to_dict()
        jpeg = crop_thumbnail(crop_bgr) if crop_bgr is not None and crop_bgr.size else b""
        item["crop_url"] = f"/api/live/crops/{item['id']}.jpg" if jpeg else None
        with self._lock:
            self._recent[item["id"]] = (item, jpeg)
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
            loop, listeners = self._loop, list(self._listeners)
        if loop is not None and listeners and not loop.is_closed():
            # RuntimeError: the web server's loop has just stopped; nobody listens any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fan_out, listeners, item)

    def close(self) -> None:
        self.closed = True

    # --- the web server's side -------------------------------------------------------------------

    @staticmethod
    def _fan_out(listeners: list[asyncio.Queue[dict[str, Any]]], item: dict[str, Any]) -> None:
        for q in listeners:
            if q.full():  # a stalled page loses its oldest recognition, never blocks the others
                q.get_nowait()
            q.put_nowait(item)

    def listen(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=32)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._listeners.add(q)
        return q

    def unlisten(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._listeners.discard(q)

    def recent(self) -> list[dict[str, Any]]:
        """The kept recognitions, newest first."""
        with self._lock:
            return [item for item, _ in reversed(self._recent.values())]

    def crop(self, event_id: str) -> bytes | None:
        with self._lock:
            found = self._recent.get(event_id)
        return found[1] if found and found[1] else None
