"""One recognition per placement: EMPTY -> CHANGED -> (stable) RECOGNISE -> REPORTED -> EMPTY.

    EMPTY     nothing in the scene; the background may adapt.
    CHANGED   an object appeared; waiting until its box stays steady for `stable_frames` frames.
    REPORTED  the placement was recognised once; waiting until the scene is empty again
              (`empty_frames` frames without an object) before anything else is recognised.

`update` returns RECOGNISE exactly once per placement, on the frame the object became stable.
"""

from __future__ import annotations

import enum

from .background import Detection
from .config import PlacementConfig
from .crop import Box, iou


class State(enum.Enum):
    EMPTY = "empty"
    CHANGED = "changed"
    REPORTED = "reported"


class Action(enum.Enum):
    NONE = "none"
    APPEARED = "appeared"  # an object entered an empty scene
    RECOGNISE = "recognise"  # the object is stable: recognise it now (once)
    EMPTIED = "emptied"  # the scene is empty again


class PlacementTracker:
    def __init__(self, cfg: PlacementConfig | None = None) -> None:
        self.cfg = cfg or PlacementConfig()
        self.reset()

    def reset(self) -> None:
        self.state = State.EMPTY
        self._last_box: Box | None = None
        self._steady = 0
        self._empty = 0

    @property
    def is_empty(self) -> bool:
        return self.state is State.EMPTY

    def update(self, detection: Detection | None) -> Action:
        cfg = self.cfg
        if detection is None:
            if self.state is State.EMPTY:
                return Action.NONE
            self._empty += 1
            self._steady = 0
            if self._empty >= cfg.empty_frames:
                self.reset()
                return Action.EMPTIED
            return Action.NONE

        self._empty = 0
        box = detection.box
        if self.state is State.EMPTY:
            self.state = State.CHANGED
            self._last_box = box
            self._steady = 1
            return self._maybe_recognise(Action.APPEARED)
        if self.state is State.CHANGED:
            if self._last_box is not None and iou(box, self._last_box) >= cfg.stable_iou:
                self._steady += 1
            else:
                self._steady = 1
            self._last_box = box
            return self._maybe_recognise(Action.NONE)
        return Action.NONE  # REPORTED: wait for the scene to empty

    def _maybe_recognise(self, otherwise: Action) -> Action:
        if self._steady >= self.cfg.stable_frames:
            self.state = State.REPORTED
            return Action.RECOGNISE
        return otherwise
