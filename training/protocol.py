"""Evaluation splits: folder-per-product trees and `protocol.json` files.

A split maps each product to a list of image paths (sorted by file name, so "the first N shots" is
deterministic). `protocol.json` (see ../shared/data/grocery/PROTOCOL.md) holds `enroll` and `query`
maps of paths relative to the protocol file's folder (or to `--data-root`), plus `train_classes`
and `heldout_classes`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from device.images import is_image_file

logger = logging.getLogger(__name__)

Split = dict[str, list[Path]]


def scan_tree(root: str | Path, *, what: str = "folder") -> Split:
    """Folder-per-product tree -> {product: sorted image paths}.

    Raises ValueError when the folder is missing, holds no product folders, or a product folder holds
    no images (an empty product cannot be enrolled or queried; remove it or add photos).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{what} {root} does not exist or is not a folder")
    split: Split = {}
    empty: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in sub.iterdir() if is_image_file(p))
        if images:
            split[sub.name] = images
        else:
            empty.append(sub.name)
    if empty:
        raise ValueError(
            f"{what} {root}: product folder(s) without images: {empty}; add photos or remove them"
        )
    if not split:
        raise ValueError(
            f"{what} {root} holds no product folders; expected {root}/<product>/<image>.jpg"
        )
    return split


def cap_shots(enroll: Split, shots: int | None) -> tuple[Split, dict[str, int]]:
    """Keep the first `shots` images of each product; report products that have fewer."""
    if shots is None:
        return {k: list(v) for k, v in enroll.items()}, {}
    if shots < 1:
        raise ValueError(f"--shots must be at least 1, got {shots}")
    short = {k: len(v) for k, v in enroll.items() if len(v) < shots}
    if short:
        logger.warning(
            "products with fewer than %s enrollment shots (used as they are): %s", shots, short
        )
    return {k: list(v[:shots]) for k, v in enroll.items()}, short


@dataclass(frozen=True)
class Protocol:
    name: str
    path: Path
    data_root: Path
    train_classes: list[str]
    heldout_classes: list[str]
    enroll: Split
    query: Split
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def read_protocol(path: str | Path, data_root: str | Path | None = None) -> Protocol:
    """Read and check a protocol.json; every listed image must exist."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"protocol file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    root = Path(data_root) if data_root is not None else path.parent
    for key in ("enroll", "query"):
        if not isinstance(data.get(key), dict) or not data[key]:
            raise ValueError(f"{path}: '{key}' must be a non-empty {{product: [paths]}} object")

    def resolve(key: str) -> Split:
        split: Split = {}
        for product, items in data[key].items():
            if not isinstance(items, list) or not items:
                raise ValueError(f"{path}: {key}[{product!r}] must be a non-empty list of paths")
            split[product] = [root / str(p) for p in items]
        missing = [str(p) for ps in split.values() for p in ps if not p.is_file()]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} {key} image(s) not found under {root} (first: "
                f"{missing[0]}); pass --data-root pointing at the data set folder"
            )
        return split

    return Protocol(
        name=str(data.get("name", path.stem)),
        path=path,
        data_root=root,
        train_classes=list(data.get("train_classes", [])),
        heldout_classes=list(data.get("heldout_classes", [])),
        enroll=resolve("enroll"),
        query=resolve("query"),
        description=str(data.get("description", "")),
    )
