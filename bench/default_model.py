"""Rebuild `models/default` (the shipped model) in one command, from the Grocery Store Dataset only.

    KERAS_HOME=../shared/keras python bench/default_model.py --data ../shared/data/grocery \\
        --out runs/default [--seed 0] [--distill W] [--l2sp A] [--fit-arg=...] [--install]

Steps (each skipped when its output exists, so an interrupted run resumes):
1. OUT/data/{train,val}/<class>/: links to the images of the protocol's `train_classes` only
   (file links, so every tool's folder scan sees them), and OUT/calib/<class>/ (train/ images)
   for int8 calibration and the bundle's domain mean and cohort.
2. `python -m training fit OUT/data --head softmax --input-size 224 --epochs 12 --seed S`
   (MobileNetV2 from ImageNet weights; 3 epochs frozen, then the top 25 % and 50 % unfrozen).
   `--distill W` / `--l2sp A` pass `fit --distill W` / `--l2sp A` (measured, not the shipped recipe: docs/BENCHMARKS.md).
3. `python -m training generalise OUT/fit --wise 1.0`: the fine-tuned backbone's pooled 1280-d
   features, without the projection head (the head is what specialises the embedding to the
   training catalogue: docs/BENCHMARKS.md, "Product domains").
4. `python -m training calibrate OUT/pooled --data OUT/data`: the bundle's fallback threshold.
5. `python -m convert OUT/pooled --quant int8 --calibration OUT/calib`: the int8 bundle with its
   adaptation block (domain mean, cohort), parity-checked -> OUT/bundle.
6. With --install: copy OUT/bundle to models/default.

No coil-dev or grozi-dev image is read: they are evaluation data (bench/domains.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_tree(src_root: Path, classes: list[str], dst: Path, *, all_required: bool = True) -> None:
    for c in classes:
        if not (src_root / c).is_dir():
            # The dataset's val/ lacks some training classes; training maps val folders by name.
            if all_required:
                raise SystemExit(
                    f"error: {src_root / c} is missing: is --data the grocery dataset?"
                )
            continue
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src_root / c).iterdir()):
            link = dst / c / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="fit --distill weight (feature distillation towards ImageNet's backbone; 0 = off)",
    )
    p.add_argument(
        "--l2sp",
        type=float,
        default=0.0,
        help="fit --l2sp strength (decay towards ImageNet's weights; 0 = off)",
    )
    p.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="extra argument passed to `training fit` (repeatable, e.g. --fit-arg=--unfreeze=0.25)",
    )
    p.add_argument("--install", action="store_true", help="copy the bundle to models/default")
    args = p.parse_args(argv)
    out = args.out.resolve()
    proto = json.loads((args.data / "protocol.json").read_text(encoding="utf-8"))
    classes = list(proto["train_classes"])
    for split in ("train", "val"):
        link_tree(args.data / split, classes, out / "data" / split, all_required=split == "train")
    link_tree(args.data / "train", classes, out / "calib")
    py = sys.executable
    fit_dir, pooled, bundle = out / "fit", out / "pooled", out / "bundle"
    if not (fit_dir / "extractor.keras").is_file():
        run([py, "-m", "training", "fit", str(out / "data"), "--out", str(fit_dir), "--head",
             "softmax", "--input-size", "224", "--epochs", "12", "--seed", str(args.seed),
             "--distill", str(args.distill), "--l2sp", str(args.l2sp),
             "--overwrite", *args.fit_arg])  # fmt: skip
    if not (pooled / "extractor.keras").is_file():
        run([py, "-m", "training", "generalise", str(fit_dir), "--wise", "1.0", "--out",
             str(pooled)])  # fmt: skip
        run([py, "-m", "training", "calibrate", str(pooled), "--data", str(out / "data")])
    if not (bundle / "model.json").is_file():
        run([py, "-m", "convert", str(pooled), "--quant", "int8", "--calibration",
             str(out / "calib"), "--out", str(bundle)])  # fmt: skip
    if args.install:
        target = ROOT / "models" / "default"
        keep = target / "README.md"
        readme = keep.read_text(encoding="utf-8") if keep.is_file() else None
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(bundle, target)
        if readme is not None:
            keep.write_text(readme, encoding="utf-8")
        print(f"installed {bundle} as {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
