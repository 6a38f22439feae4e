"""How far fine-tuning moved an extractor's features from ImageNet's, on the training images.

    KERAS_HOME=../shared/keras python bench/feature_drift.py RUN_DIR [RUN_DIR ...] \\
        --data runs/default/data [--images 300] [--seed 0]

For each RUN_DIR (a `training generalise` run: pooled features), the cosine between its feature
and the untrained ImageNet backbone's pooled feature of the same image, over a random sample of
the training images (DATA/train, decoded and resized as `training fit` does). 1.0 = unchanged.
`fit --distill` and `--l2sp` exist to keep this high (docs/training.md); docs/BENCHMARKS.md,
"Product domains", sets it beside what each model then does on other shops' products.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="RUN_DIRs of pooled-feature extractors")
    p.add_argument("--data", type=Path, required=True, help="training data (DATA/train/<class>)")
    p.add_argument("--images", type=int, default=300, help="how many training images to sample")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from device.vectors import l2_normalize
    from training.data import decode_items, scan_dataset
    from training.generalise import build_pooled_extractor
    from training.model import load_extractor

    extractors = [load_extractor(r) for r in args.runs]
    sizes = {int(e.input_shape[1]) for e in extractors}
    if len(sizes) != 1:
        p.error(f"the runs take different input sizes ({sorted(sizes)}): compare one size at once")
    (size,) = sizes
    items = scan_dataset(args.data / "train", val_split=0.0, seed=args.seed).train
    rng = np.random.default_rng(args.seed)
    chosen = [items[i] for i in sorted(rng.choice(len(items), args.images, replace=False))]
    x = decode_items(chosen, size, progress=False)[0].images.astype(np.float32)
    reference, _ = build_pooled_extractor("imagenet", alpha=0.0, input_size=size)
    base = l2_normalize(np.asarray(reference.predict(x, verbose=0)))
    print(f"`python bench/feature_drift.py {shlex.join(argv or sys.argv[1:])}`")
    print()
    print("| run | cosine to ImageNet's pooled features: mean | min |")
    print("|---|---|---|")
    for run, extractor in zip(args.runs, extractors, strict=True):
        c = np.sum(l2_normalize(np.asarray(extractor.predict(x, verbose=0))) * base, axis=1)
        print(f"| `{run}` | {c.mean():.3f} | {c.min():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
