"""Synthetic scenes with known ground truth: product photos placed on a static background.

A `SyntheticScene` renders a fixed, textured "table" background, composites product photos at known
boxes, and adds sensor noise and a slow global lighting drift. A `SyntheticSource` plays a schedule
of placements and removals through the `FrameSource` interface (so it drives the real service loop)
and tells the ground truth of every frame; `write_frames` stores the frames as a folder of images or
an MJPG video (+ a JSON of the truth) for the folder/video sources and the demo.

    photos = load_photos("tests/fixtures/grocery/test", per_product=1)
    placements, n = make_schedule(photos, seed=0)
    source = SyntheticSource(SyntheticScene(seed=0, noise=3, drift=0.15), placements, n)
    write_frames(source, "demo.avi")
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .crop import Box
from .folders import product_images
from .images import is_image_file, load_image


@dataclass(frozen=True, eq=False)
class Placement:
    """`image` lies at `box` (x, y, w, h) from frame `start` up to, not including, frame `end`."""

    label: str
    image: np.ndarray = field(repr=False)
    box: Box
    start: int
    end: int

    def active(self, index: int) -> bool:
        return self.start <= index < self.end

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "box": list(self.box), "start": self.start, "end": self.end}


def make_background(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic table-like surface: a colour gradient, soft blotches and fine grain."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(rng.uniform(90, 170, size=3), dtype=np.float32)
    tilt = rng.uniform(-30, 30, size=(2, 3)).astype(np.float32)
    img = base + (xx / width)[..., None] * tilt[0] + (yy / height)[..., None] * tilt[1]
    blotches = rng.normal(0, 1, size=(max(2, height // 40), max(2, width // 40), 3)).astype(
        np.float32
    )
    img += 12 * cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 1, size=(height, max(2, width // 8))).astype(np.float32)
    img += 6 * cv2.resize(grain, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticScene:
    """Renders frames: background + objects, times a slow lighting gain, plus sensor noise."""

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        *,
        seed: int = 0,
        noise: float = 2.0,
        drift: float = 0.0,
        drift_period: int = 400,
        background: np.ndarray | None = None,
    ) -> None:
        self.width, self.height = width, height
        self.noise, self.drift, self.drift_period = noise, drift, max(2, drift_period)
        self.background = make_background(width, height, seed) if background is None else background
        if self.background.shape[:2] != (height, width):
            raise ValueError(
                f"background is {self.background.shape[1]}x{self.background.shape[0]}, expected {width}x{height}"
            )
        rng = np.random.default_rng(seed + 1)
        # A small bank of noise fields, shifted per frame: realistic enough and cheap to render.
        self._noise = [
            (rng.standard_normal((height, width, 3), dtype=np.float32) * noise)
            for _ in range(4 if noise > 0 else 0)
        ]
        self._rng = np.random.default_rng(seed + 2)
        self._resized: dict[tuple[int, Box], np.ndarray] = {}

    def gain(self, index: int) -> float:
        """The lighting gain of frame `index`: 1 + drift * sin(2 pi index / drift_period)."""
        return 1.0 + self.drift * math.sin(2.0 * math.pi * index / self.drift_period)

    def render(self, index: int, objects: Sequence[tuple[np.ndarray, Box]] = ()) -> np.ndarray:
        import cv2

        frame = self.background.copy()
        for image, box in objects:
            x, y, w, h = box
            key = (id(image), box)
            patch = self._resized.get(key)
            if patch is None:
                patch = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
                if len(self._resized) > 256:
                    self._resized.clear()
                self._resized[key] = patch
            frame[y : y + h, x : x + w] = patch
        gain = self.gain(index)
        if not self._noise and gain == 1.0:
            return frame
        out = frame.astype(np.float32)
        if gain != 1.0:
            out *= np.float32(gain)
        if self._noise:
            field_ = self._noise[index % len(self._noise)]
            shift = int(self._rng.integers(0, self.width))
            out += np.roll(field_, shift, axis=1)
        return np.clip(out, 0, 255).astype(np.uint8)


class SyntheticSource:
    """A finite `FrameSource` playing `placements` over `n_frames` frames of a scene."""

    finite = True

    def __init__(
        self, scene: SyntheticScene, placements: Sequence[Placement], n_frames: int
    ) -> None:
        self.scene = scene
        self.placements = list(placements)
        self.n_frames = n_frames
        self.index = 0

    def truth(self, index: int) -> list[Placement]:
        return [p for p in self.placements if p.active(index)]

    def read(self) -> np.ndarray | None:
        if self.index >= self.n_frames:
            return None
        objects = [(p.image, p.box) for p in self.truth(self.index)]
        frame = self.scene.render(self.index, objects)
        self.index += 1
        return frame

    def close(self) -> None:
        pass

    def __enter__(self) -> SyntheticSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveScene:
    """An endless `FrameSource` whose content the caller changes (`show`, `clear`): a stand-in for a
    person placing and turning a product in front of the camera (guided enrollment tests)."""

    finite = False

    def __init__(self, scene: SyntheticScene) -> None:
        self.scene = scene
        self.objects: list[tuple[np.ndarray, Box]] = []
        self.index = 0

    def show(self, image: np.ndarray, box: Box) -> None:
        self.objects = [(image, box)]

    def clear(self) -> None:
        self.objects = []

    def read(self) -> np.ndarray | None:
        frame = self.scene.render(self.index, self.objects)
        self.index += 1
        return frame

    def close(self) -> None:
        pass

    def __enter__(self) -> LiveScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_photos(folder: str | Path, per_product: int = 1) -> list[tuple[str, np.ndarray]]:
    """(product, BGR photo) pairs from a folder-per-product tree, `per_product` photos each."""
    folder = Path(folder)
    photos = []
    for name, paths in product_images(folder):
        for path in paths[:per_product]:
            photos.append((name, load_image(path)))
    if not photos:
        loose = [p for p in sorted(folder.iterdir()) if is_image_file(p)]
        photos = [(p.stem, load_image(p)) for p in loose]
    if not photos:
        raise ValueError(f"{folder} holds no product photos (expected <product>/*.jpg)")
    return photos


def make_schedule(
    photos: Sequence[tuple[str, np.ndarray]],
    *,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    lead_in: int = 30,
    hold: int = 30,
    gap: int = 20,
    size: tuple[float, float] = (0.35, 0.55),
    margin: float = 0.12,
) -> tuple[list[Placement], int]:
    """One placement per photo, in turn: `lead_in` empty frames, then each photo held for `hold`
    frames at a random box (side `size` x frame height, aspect kept, `margin` x its side from the
    frame's edges), `gap` empty frames after it.
    Returns the placements and the total number of frames."""
    rng = np.random.default_rng(seed)
    placements = []
    t = lead_in
    for label, image in photos:
        ih, iw = image.shape[:2]
        side = float(rng.uniform(*size)) * height
        scale = side / max(ih, iw)
        w, h = max(8, round(iw * scale)), max(8, round(ih * scale))
        w, h = min(w, width - 2), min(h, height - 2)
        # Keep a margin so the padded square crop fits (an object at the very edge is tested apart).
        side_pad = round(max(w, h) * (1 + 2 * margin))
        mx = max(0, min((side_pad - w) // 2, (width - w) // 2))
        my = max(0, min((side_pad - h) // 2, (height - h) // 2))
        x = int(rng.integers(mx, width - w - mx + 1))
        y = int(rng.integers(my, height - h - my + 1))
        placements.append(Placement(label, image, (x, y, w, h), t, t + hold))
        t += hold + gap
    return placements, t


def synthetic_source_from_spec(
    spec: str, *, width: int = 640, height: int = 480
) -> SyntheticSource:
    """`synthetic:PHOTOS_DIR`: every product of PHOTOS_DIR placed in turn, with noise and drift."""
    folder = spec.split(":", 1)[1]
    if not Path(folder).is_dir():
        raise ValueError(f"{spec!r}: {folder} is not a folder of product photos")
    photos = load_photos(folder, per_product=1)
    placements, n = make_schedule(photos, width=width, height=height, seed=0)
    scene = SyntheticScene(width, height, seed=0, noise=2.0, drift=0.1)
    return SyntheticSource(scene, placements, n)


def write_frames(source: SyntheticSource, out: str | Path, *, fps: float = 15.0) -> Path:
    """Write every frame of `source` to a video (.avi: MJPG, .mp4: mp4v) or to a folder of JPEGs;
    the ground truth goes beside it as JSON (`<video>.json` or `<folder>/truth.json`)."""
    import cv2

    out = Path(out)
    truth = {
        "width": source.scene.width,
        "height": source.scene.height,
        "n_frames": source.n_frames,
        "placements": [p.to_dict() for p in source.placements],
    }
    if out.suffix.lower() in (".avi", ".mp4"):
        out.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if out.suffix.lower() == ".avi" else "mp4v"))
        writer = cv2.VideoWriter(str(out), fourcc, fps, (source.scene.width, source.scene.height))
        if not writer.isOpened():
            raise ValueError(f"OpenCV cannot write the video {out}")
        try:
            while (frame := source.read()) is not None:
                writer.write(frame)
        finally:
            writer.release()
        out.with_suffix(".json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
        return out
    out.mkdir(parents=True, exist_ok=True)
    i = 0
    while (frame := source.read()) is not None:
        cv2.imwrite(str(out / f"frame_{i:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        i += 1
    (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return out
