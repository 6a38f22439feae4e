"""An inner fold of the grocery training classes: where a choice may be made on products new to
the model without touching the evaluation sets.

    python bench/inner_fold.py --data ../shared/data/grocery --out runs/fold/grocery-foldA
    KERAS_HOME=../shared/keras python bench/default_model.py --data runs/fold/grocery-foldA \\
        --out runs/fold/foldA-seed0 --seed 0
    python bench/colour_mix.py runs/fold/foldA-seed0/bundle --choose-on runs/fold/grocery-foldA

OUT is a protocol folder (links to the dataset's train/, val/, iconic/, classes.tsv, LICENSE) whose
protocol.json keeps only fold A of the grocery `train_classes` as `train_classes` and names fold B
as `heldout_classes`. Fold B mirrors how the grocery protocol itself holds products out: the
training packages (sorted) at odd positions, plus every sixth produce class (sorted, from the
fourth), 16 of the 66. A model trained on OUT never sees fold B; fold B's `train/` and `val/`
photos (never `test/`) are where a choice is then made: protocol.json enrolls the first 4 (sorted)
`train/` photos of each fold-B class and queries the rest of its `train/` photos and its `val/`
photos, so the fold is a protocol like the others (`bench/domains.py`, `bench/colour_mix.py
--choose-on`, `training evaluate --protocol`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.images import list_images  # noqa: E402

LINKED = ("train", "val", "iconic", "classes.tsv", "LICENSE")
SHOTS = 4


def split_fold(
    train_classes: list[str], super_class: dict[str, str]
) -> tuple[list[str], list[str]]:
    """(fold A, fold B) of the training classes; see the module doc for fold B's rule."""
    missing = sorted(c for c in train_classes if c not in super_class)
    if missing:
        raise ValueError(f"classes.tsv has no super class for {missing}")
    ordered = sorted(train_classes)
    packages = [c for c in ordered if super_class[c] == "Packages"]
    produce = [c for c in ordered if super_class[c] != "Packages"]
    held = set(packages[1::2]) | {c for i, c in enumerate(produce) if i % 6 == 3}
    return [c for c in ordered if c not in held], [c for c in ordered if c in held]


def _photos(folder: Path) -> list[str]:
    return [f.name for f in list_images(folder)] if folder.is_dir() else []


def enroll_and_query(
    data: Path, classes: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({class: first SHOTS train/ photos}, {class: the rest of train/ + val/}), paths relative
    to `data` as protocol.json writes them."""
    enroll: dict[str, list[str]] = {}
    query: dict[str, list[str]] = {}
    for c in classes:
        train, val = _photos(data / "train" / c), _photos(data / "val" / c)
        if len(train) < SHOTS or len(train) + len(val) <= SHOTS:
            raise ValueError(
                f"{c}: needs at least {SHOTS} photos in {data / 'train' / c} to enroll and one "
                f"more there or in {data / 'val' / c} to query; hold out another class"
            )
        enroll[c] = [f"train/{c}/{f}" for f in train[:SHOTS]]
        query[c] = [f"train/{c}/{f}" for f in train[SHOTS:]] + [f"val/{c}/{f}" for f in val]
    return enroll, query


def make_fold(data: Path, out: Path) -> tuple[list[str], list[str]]:
    """Write the fold's protocol folder `out` from the grocery dataset `data`; (fold A, fold B)."""
    proto = json.loads((data / "protocol.json").read_text(encoding="utf-8"))
    with (data / "classes.tsv").open(encoding="utf-8", newline="") as fh:
        super_class = {r["fine_class"]: r["super"] for r in csv.DictReader(fh, delimiter="\t")}
    fold_a, fold_b = split_fold(list(proto["train_classes"]), super_class)
    enroll, query = enroll_and_query(data, fold_b)
    out.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        if (data / name).exists() and not (out / name).exists():
            os.symlink((data / name).resolve(), out / name)
    fold = {
        "name": f"{proto.get('name', 'grocery')}-inner-fold",
        "description": "inner fold of the grocery training classes (bench/inner_fold.py): "
        "heldout_classes are fold B, never trained on: the first 4 train/ photos of each are "
        "enrolled, the rest of its train/ photos and its val/ photos are the queries",
        "train_classes": fold_a,
        "heldout_classes": fold_b,
        "enroll": enroll,
        "query": query,
    }
    (out / "protocol.json").write_text(json.dumps(fold, indent=1) + "\n", encoding="utf-8")
    return fold_a, fold_b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the grocery dataset folder")
    p.add_argument("--out", type=Path, required=True, help="the fold's protocol folder to write")
    args = p.parse_args(argv)
    for need in ("protocol.json", "classes.tsv", "train"):
        if not (args.data / need).exists():
            p.error(f"{args.data / need} is missing: --data takes the grocery dataset folder")
    if (args.data.resolve() / "protocol.json") == (args.out.resolve() / "protocol.json"):
        p.error("--out must not be the dataset folder itself")
    fold_a, fold_b = make_fold(args.data, args.out)
    print(f"fold A: {len(fold_a)} classes to train on; fold B (held out): {', '.join(fold_b)}")
    print(f"wrote {args.out / 'protocol.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
