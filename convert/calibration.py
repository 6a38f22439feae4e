"""Calibration and parity images: which files, in which order, and how they become model inputs.

A calibration folder may be flat or a folder-per-class tree (any depth). Files are taken round-robin
across folders, each folder in name order, so a capped subset is class-balanced and the same on
every run. Images go through `device.preprocess.prepare`, the device's own preprocessing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.bundle import InputSpec
from device.images import is_image_file, load_image
from device.preprocess import prepare

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 300
HOLDOUT_EVERY = 5  # every 5th selected image is held out of calibration for the parity check


def image_tree(root: str | Path) -> dict[str, list[Path]]:
    """Images under `root` grouped by the folder holding them (relative path, "." for root)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of images")
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if is_image_file(path) and not any(p.startswith(".") for p in path.relative_to(root).parts):
            groups.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    if not groups:
        raise ValueError(f"{root} holds no images (.jpg, .png, ...) in it or in its sub-folders")
    return {k: sorted(v) for k, v in sorted(groups.items())}


def balanced_selection(root: str | Path, max_images: int = DEFAULT_MAX_IMAGES) -> list[Path]:
    """Up to `max_images` images, round-robin over the folders: class-balanced, deterministic."""
    if max_images < 1:
        raise ValueError(f"max images must be at least 1, got {max_images}")
    groups = list(image_tree(root).values())
    selected: list[Path] = []
    depth = 0
    while len(selected) < max_images:
        layer = [g[depth] for g in groups if depth < len(g)]
        if not layer:
            break
        selected.extend(layer[: max_images - len(selected)])
        depth += 1
    return selected


def split_holdout(
    paths: Sequence[Path], every: int = HOLDOUT_EVERY
) -> tuple[list[Path], list[Path]]:
    """(calibration, held_out): every `every`-th path is held out."""
    calibration = [p for i, p in enumerate(paths) if i % every != every - 1]
    held_out = [p for i, p in enumerate(paths) if i % every == every - 1]
    return calibration, held_out


@dataclass
class PreparedImages:
    paths: list[Path]
    inputs: np.ndarray  # (N, H, W, 3) in the spec's dtype
    skipped: list[tuple[Path, str]]


def prepare_files(paths: Sequence[Path], spec: InputSpec) -> PreparedImages:
    """Decode and prepare images one at a time (only the small model inputs are kept)."""
    ok_paths: list[Path] = []
    inputs: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            inputs.append(prepare(load_image(path), spec))
        except ValueError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped.append((path, str(exc)))
            continue
        ok_paths.append(path)
    shape = (0, spec.height, spec.width, spec.channels)
    stacked = np.concatenate(inputs) if inputs else np.zeros(shape, dtype=np.dtype(spec.dtype))
    return PreparedImages(ok_paths, stacked, skipped)


@dataclass
class LoadedImages:
    paths: list[Path]
    images: list[np.ndarray]  # BGR uint8, as the device's camera/crop would give them
    skipped: list[tuple[Path, str]]


def load_images(paths: Sequence[Path]) -> LoadedImages:
    """Decode images with the device's loader; unreadable files are skipped and reported."""
    ok_paths: list[Path] = []
    images: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            image = load_image(path)
        except ValueError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped.append((path, str(exc)))
            continue
        ok_paths.append(path)
        images.append(image)
    return LoadedImages(ok_paths, images, skipped)


def model_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """BGR images -> (N, H, W, 3) tensors in `spec`'s dtype, via the device's `prepare`."""
    if not images:
        shape = (0, spec.height, spec.width, spec.channels)
        return np.zeros(shape, dtype=np.dtype(spec.dtype))
    return np.concatenate([prepare(image, spec) for image in images])


def representative_dataset(
    inputs: np.ndarray, progress_every: int = 50
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's representative data set: one (1, H, W, 3) float32 sample at a time."""

    def generate() -> Iterator[list[np.ndarray]]:
        for i, sample in enumerate(inputs, 1):
            if i % progress_every == 0 or i == len(inputs):
                log.info("calibrating: %d/%d images", i, len(inputs))
            yield [sample[None].astype(np.float32)]

    return generate
