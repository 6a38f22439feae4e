"""Saved event crops, served by event id: a request names an event, never a file.

The API hands out `/api/events/<id>/crop.jpg` for the events it lists; the crop file named by
that event's row is remembered here (bounded) and read only if it lies inside the [service]
save_crops folder, so a request cannot make the server read any other file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path


class CropFiles:
    def __init__(self, folder: str, keep: int = 5000) -> None:
        self.folder = Path(folder).resolve() if folder else None
        self.keep = keep
        self._lock = threading.Lock()  # handlers' worker threads and the loop's thread
        self._files: OrderedDict[str, str] = OrderedDict()

    def remember(self, event_id: str, crop_file: str) -> None:
        with self._lock:
            self._files[event_id] = crop_file
            self._files.move_to_end(event_id)
            while len(self._files) > self.keep:
                self._files.popitem(last=False)

    def read(self, event_id: str) -> bytes | None:
        """The JPEG bytes, or None (unknown event, file pruned, or outside the crop folder)."""
        with self._lock:
            name = self._files.get(event_id)
        if name is None or self.folder is None:
            return None
        path = Path(name).resolve()
        if path.parent != self.folder or path.suffix.lower() != ".jpg":
            return None
        try:
            return path.read_bytes()
        except OSError:  # pruned since ([service] save_crops_keep)
            return None
