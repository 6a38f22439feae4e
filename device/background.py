"""Finding the object: background subtraction on a small copy of the frame.

`diff` (the default): the empty scene is learnt at start as the per-pixel median of the first
frames, then adapted with a running average only while the scene is empty (an object that sits
there is never absorbed). Each frame is compared after dividing out a global brightness change (the
median ratio frame/background inside the region of interest), so daylight drifting slowly does not
look like an object; sensor noise is removed by the downscaling, a box blur, the threshold,
a morphological open/close and the minimum area. `mog2`: OpenCV's MOG2 on the same small frame,
learning likewise only while the scene is empty.

Most frames show an unchanged scene, so that case is made cheap: the frame is compared with a cached
copy of the background already scaled by the last measured brightness (light drifts slowly), and
only when enough pixels differ is the brightness measured again and the comparison redone before
anything is called an object. The brightness is also re-measured every `GAIN_EVERY` frames and the
background adapted every `ADAPT_EVERY` empty frames (with the compounded rate), so an empty frame
costs a handful of OpenCV calls on a 128x96 image. Only the recognition crops from the
full-resolution frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .config import DetectorConfig
from .crop import Box

logger = logging.getLogger(__name__)

GAIN_EVERY = 8  # frames between brightness measurements when nothing changes
ADAPT_EVERY = 4  # empty frames blended into the background at once (the rate compounded)
GAIN_TOLERANCE = 0.002  # relative brightness change (~0.5 grey level) that rescales the background


@dataclass(frozen=True)
class Detection:
    box: Box  # the object's bounding box in full-resolution pixels (x, y, w, h)
    area: float  # the object's area as a fraction of the region of interest


class BackgroundDetector:
    """Background model + the largest changed region inside the region of interest."""

    def __init__(
        self,
        cfg: DetectorConfig | None = None,
        roi: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
    ) -> None:
        self.cfg = cfg or DetectorConfig()
        self.roi = roi
        self._frame_shape: tuple[int, int] | None = None
        self.reset()

    # --- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the background; the next `learn_frames` frames learn it again."""
        self._learn: list[np.ndarray] = []
        self._bg: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._mog = None
        self._seen = 0
        self._gain_value = 1.0  # brightness of the scene relative to the background
        self._gain_age = GAIN_EVERY  # frames since it was measured
        self._bg_scaled: np.ndarray | None = None  # uint8 background x gain, for the comparison
        self._pending_adapt = 0  # adapt() calls not yet blended in

    @property
    def ready(self) -> bool:
        """True once the empty background has been learnt."""
        return self._seen >= self.cfg.learn_frames

    @property
    def background(self) -> np.ndarray | None:
        """The learnt background (small, float32 grayscale), for inspection."""
        return self._bg

    # --- geometry ------------------------------------------------------------------------------

    def _setup(self, shape: tuple[int, int]) -> None:
        fh, fw = shape
        ww = min(self.cfg.work_width, fw)
        wh = max(8, round(fh * ww / fw))
        # Grayscale detection samples every step-th pixel when the step divides the frame exactly
        # (the same pixels INTER_NEAREST picks, without the resize).
        step = max(1, round(fw / ww))
        self._step = step if fw % step == 0 and fh % step == 0 else 0
        if self._step:
            ww, wh = fw // step, fh // step
        self._frame_shape = shape
        self._work = (ww, wh)
        x0, y0, x1, y1 = self.roi
        self._roi_px = (
            int(np.floor(x0 * ww)),
            int(np.floor(y0 * wh)),
            max(int(np.ceil(x1 * ww)), int(np.floor(x0 * ww)) + 1),
            max(int(np.ceil(y1 * wh)), int(np.floor(y0 * wh)) + 1),
        )
        rx0, ry0, rx1, ry1 = self._roi_px
        self._roi_area = float((rx1 - rx0) * (ry1 - ry0))
        self._gain_step = max(1, int((self._roi_area / 500.0) ** 0.5))
        self._scale = (fw / ww, fh / wh)
        # Fewer changed pixels than this cannot close into an object of the minimum area.
        self._min_changed_px = max(1, int(0.25 * self.cfg.min_area * self._roi_area))
        k = self.cfg.morph
        import cv2

        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        self.reset()

    def _small(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        # Nearest-neighbour subsampling is ~15x cheaper than INTER_AREA; the blur then averages the
        # sensor noise, and the background is sampled on the same grid, so aliasing cancels out.
        if self._step and not self.cfg.color:
            # Grayscale: every step-th pixel of the green channel (most of luma) is one strided
            # copy, 3-4x cheaper than resizing and converting the colour frame.
            small = np.ascontiguousarray(frame[:: self._step, :: self._step, 1])
        else:
            small = cv2.resize(frame, self._work, interpolation=cv2.INTER_NEAREST)
            if not self.cfg.color:
                small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        b = self.cfg.blur
        if b > 1:
            # A box filter: 2-3x cheaper than a Gaussian of the same size, and after the threshold
            # and the morphology the two give the same masks.
            small = cv2.blur(small, (b, b))
        rx0, ry0, rx1, ry1 = self._roi_px
        return small[ry0:ry1, rx0:rx1]

    def _gain(self, small: np.ndarray) -> float:
        """Global brightness of `small` relative to the background: the median ratio over a
        sub-sample of one channel (robust to an object covering up to half the region of
        interest; a uniform lighting change scales every channel alike)."""
        if not self.cfg.lighting_compensation or self._bg is None:
            return 1.0
        st = self._gain_step  # ~500 samples: plenty for a median, cheap to select
        sub = small[::st, ::st, 1] if small.ndim == 3 else small[::st, ::st]
        ref = self._bg[::st, ::st, 1] if self._bg.ndim == 3 else self._bg[::st, ::st]
        ratio = ((sub.astype(np.float32) + 1.0) / (ref + 1.0)).ravel()
        k = ratio.size // 2
        gain = float(np.partition(ratio, k)[k])  # the median, without np.median's overhead
        return min(max(gain, 0.33), 3.0)

    # --- detection -----------------------------------------------------------------------------

    def detect(self, frame: np.ndarray) -> Detection | None:
        """The largest object in the frame's region of interest, or None (empty, or still learning)."""
        import cv2

        shape = frame.shape[:2]
        if shape != self._frame_shape:
            if self._frame_shape is not None:
                logger.info(
                    "frame size changed to %sx%s: learning the background again", *shape[::-1]
                )
            self._setup(shape)
        small = self._small(frame)
        self._last = small
        if not self.ready:
            self._learn.append(small)
            self._seen += 1
            if self.cfg.method == "mog2":
                self._mog2().apply(small, learningRate=1.0 / self._seen)
            if self.ready:
                self._bg = np.median(np.stack(self._learn), axis=0).astype(np.float32)
                self._learn = []
                logger.info("background learnt from %d frames", self.cfg.learn_frames)
            return None
        assert self._bg is not None
        if self.cfg.method == "mog2":
            gain = self._gain(small)
            comp = small if gain == 1.0 else cv2.convertScaleAbs(small, alpha=1.0 / gain)
            fg = self._mog2().apply(comp, learningRate=0.0)
            return self._largest((fg > 0).astype(np.uint8))
        self._gain_age += 1
        if self._gain_age >= GAIN_EVERY:
            self._measure_gain(small)
        mask = self._changed(small)
        if mask is not None and self._gain_age > 0 and self.cfg.lighting_compensation:
            # Something differs: measure the brightness now, so a lighting change is not an object.
            self._measure_gain(small)
            mask = self._changed(small)
        if mask is None:
            return None
        if mask.ndim == 3:
            # Changed in any channel: the weighted sum of 0/255 channels is > 0 iff one is set
            # (two fast OpenCV calls instead of a per-pixel max over the channels).
            mask = cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY)
            if cv2.countNonZero(mask) < self._min_changed_px:
                return None
        _, mask = cv2.threshold(mask, 0, 1, cv2.THRESH_BINARY)
        return self._largest(mask)

    def _changed(self, small: np.ndarray) -> np.ndarray | None:
        """The 0/255 mask of values that differ from the scaled background, or None when too few
        do for an object of the minimum area (the common case: an unchanged scene)."""
        import cv2

        if self._bg_scaled is None:
            assert self._bg is not None
            self._bg_scaled = cv2.convertScaleAbs(self._bg, alpha=self._gain_value)
        diff = cv2.absdiff(small, self._bg_scaled)
        _, mask = cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY)
        # Counting changed channel values (a colour mask viewed as one channel) over-counts changed
        # pixels, so fewer values than the limit means fewer pixels too: no object, no morphology.
        flat = mask.reshape(mask.shape[0], -1) if mask.ndim == 3 else mask
        if cv2.countNonZero(flat) < self._min_changed_px:
            return None
        return mask

    def _measure_gain(self, small: np.ndarray) -> None:
        self._gain_age = 0
        gain = self._gain(small)
        if abs(gain - self._gain_value) > GAIN_TOLERANCE * self._gain_value:
            self._gain_value = gain
            self._bg_scaled = None

    def _mog2(self):
        import cv2

        if self._mog is None:
            self._mog = cv2.createBackgroundSubtractorMOG2(
                history=max(self.cfg.learn_frames, 100), varThreshold=16, detectShadows=False
            )
        return self._mog

    def _largest(self, mask: np.ndarray) -> Detection | None:
        import cv2

        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            return None
        areas = [cv2.contourArea(c) for c in contours]
        i = int(np.argmax(areas))
        # contourArea measures the polygon through pixel centres; count the pixels instead.
        x, y, w, h = cv2.boundingRect(contours[i])
        area = float(np.count_nonzero(mask[y : y + h, x : x + w]))
        if area < self.cfg.min_area * self._roi_area:
            return None
        rx0, ry0 = self._roi_px[:2]
        sx, sy = self._scale
        assert self._frame_shape is not None
        fh, fw = self._frame_shape
        bx0 = int(np.floor((x + rx0) * sx))
        by0 = int(np.floor((y + ry0) * sy))
        bx1 = min(fw, int(np.ceil((x + rx0 + w) * sx)))
        by1 = min(fh, int(np.ceil((y + ry0 + h) * sy)))
        return Detection(box=(bx0, by0, bx1 - bx0, by1 - by0), area=area / self._roi_area)

    def adapt(self) -> None:
        """Blend the last frame into the background: call only when the scene is empty.

        Blends every `ADAPT_EVERY` calls with the rate compounded over them: the same slow average
        for a slowly drifting scene, at a quarter of the cost."""
        if not self.ready or self._last is None or self.cfg.adapt_rate <= 0:
            return
        import cv2

        assert self._bg is not None
        if self.cfg.method == "mog2":
            self._mog2().apply(self._last, learningRate=self.cfg.adapt_rate)
        self._pending_adapt += 1
        if self._pending_adapt < ADAPT_EVERY:
            return
        rate = 1.0 - (1.0 - self.cfg.adapt_rate) ** self._pending_adapt
        self._pending_adapt = 0
        cv2.accumulateWeighted(self._last, self._bg, rate)
        self._bg_scaled = None
