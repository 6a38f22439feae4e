"""Folder-per-product trees (ROOT/<product>/<photo>): the one rule for which sub-folders count.

A sub-folder is a product (or a training class) when its name does not start with "." (hidden:
.git, .thumbnails, ...) and, where photos are wanted, when it holds at least one image
(`device.images.list_images`: visible files with an image suffix). Used by enrollment from photos,
the synthetic scenes, training's data scan and calibration, and convert's parity check.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from .images import list_images


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def product_dirs(root: str | Path) -> list[Path]:
    """The visible sub-folders of `root`, in name order (empty ones included)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not is_hidden(p))


def product_images(
    root: str | Path, *, exclude: Collection[str] = ()
) -> list[tuple[str, list[Path]]]:
    """(folder name, its images) of each visible sub-folder holding images, in name order;
    folders named in `exclude` are left out."""
    out = []
    for sub in product_dirs(root):
        if sub.name in exclude:
            continue
        images = list_images(sub)
        if images:
            out.append((sub.name, images))
    return out
