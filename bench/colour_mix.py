"""A colour histogram beside the model's embedding: does it help on every product domain?

    python bench/colour_mix.py BUNDLE [BUNDLE ...] [--data ../shared/data]
        [--sets grocery,coil-dev,grozi-dev] [--weights 0,0.05,0.1,0.2,0.3]
        [--cache runs/domain-cache] [--training-check ../shared/data/grocery]
        [--choose-on FOLD] [--summary]

For each bundle and set, the int8 embeddings of the device's `Embedder` (bench/domains.py's
cache) are mixed with a 4x4x4 colour histogram of the same image (`colour_histogram`: the image
shrunk to 112 px, square roots of the bin shares, so a unit vector; cheap on a Pi), each part
centred on the gallery's own mean:

    mixed = [ sqrt(1 - w) * unit(unit(emb) - mu_emb),  sqrt(w) * unit(hist - mu_hist) ]

whose cosine is `(1 - w) * cos_model + w * cos_colour`. P@1 and leave-class-out AUROC per w.

`--training-check GROCERY` does the same on the grocery *training* classes (enrollment: the first
4 `train/` photos of each class with `val/` photos; queries: its `val/` photos): the only data a
weight may be chosen on. The fine-tuned model has seen those classes, so that check is biased
towards the model's own features.

`--choose-on FOLD` is the unbiased version: FOLD is an inner fold of the grocery training classes
(`bench/inner_fold.py`: a protocol folder whose queries are products the bundles given were not
trained on), scored like the sets and not counted among them; the weight with the highest P@1 +
AUROC there (the smaller on a tie; the rule fixed before the fold was first measured) is printed
for each bundle. Those products are new to the model and from the training data's domain, so a
weight may be chosen there and applied unchanged to a model trained on every class.

An experiment, not a device step: the device matches the model's embedding only. coil-dev and
grozi-dev are evaluation data: a weight read off their rows and shipped would be chosen on them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import domains  # noqa: E402  # bench/domains.py: the device's embeddings, cached
from feature_depth import centre_on_gallery, mix, score  # noqa: E402

from device.bundle import read_bundle_meta, sha256_file  # noqa: E402
from device.images import list_images, load_image  # noqa: E402

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3)
BINS = 4
SIZE = 112
SHOTS = 4
TRAINING_ROW = "grocery training classes (val/)"
FOLD_ROW = "inner fold (choose on)"


def colour_histogram(image_bgr: np.ndarray, bins: int = BINS, size: int = SIZE) -> np.ndarray:
    """(bins**3,) float32 unit vector: square roots of the shares of the image's pixels in each
    joint B, G, R bin (equal-width bins over 0-255), the image first shrunk to size x size."""
    import cv2

    small = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_AREA)
    hist = cv2.calcHist([small], [0, 1, 2], None, [bins] * 3, [0, 256] * 3).ravel()
    return np.sqrt(hist / hist.sum()).astype(np.float32)


def _histograms(files: list[Path]) -> np.ndarray:
    return np.stack([colour_histogram(load_image(f)) for f in files])


def _protocol_histograms(data: Path, name: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(enrollment, query) histograms in the protocol's order (bench/domains.py's order)."""
    from training.protocol import read_protocol

    path = data / name / "protocol.json"
    digest = sha256_file(path)[:8]
    cached = cache / f"colour-b{BINS}-s{SIZE}-{name}-{digest}.npz"
    if cached.is_file():
        z = np.load(cached)
        return z["e"], z["q"]
    proto = read_protocol(path)
    e = _histograms([f for fs in proto.enroll.values() for f in fs])
    q = _histograms([f for fs in proto.query.values() for f in fs])
    cache.mkdir(parents=True, exist_ok=True)
    from device.files import atomic_path

    with atomic_path(cached) as tmp, tmp.open("wb") as fh:
        np.savez(fh, e=e, q=q)
    return e, q


def evaluate(
    emb: tuple[np.ndarray, np.ndarray],
    hist: tuple[np.ndarray, np.ndarray],
    labels: tuple[np.ndarray, np.ndarray],
    weights: list[float],
) -> dict[float, tuple[float, float]]:
    """{w: (P@1, AUROC)} of the model's embedding mixed with the colour histogram at w."""
    (ee, qe), (eh, qh) = centre_on_gallery(*emb), centre_on_gallery(*hist)
    ey, qy = labels
    return {w: score(mix(ee, eh, w), ey, mix(qe, qh, w), qy) for w in weights}


def training_split(grocery: Path) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """The grocery training classes as a protocol: first SHOTS train/ photos, val/ queries."""
    classes = json.loads((grocery / "protocol.json").read_text(encoding="utf-8"))["train_classes"]
    ef, ey, qf, qy = [], [], [], []
    for c in sorted(classes):
        val = list_images(grocery / "val" / c) if (grocery / "val" / c).is_dir() else []
        if not val:
            continue
        shots = list_images(grocery / "train" / c)[:SHOTS]  # sorted by name
        ef += shots
        ey += [c] * len(shots)
        qf += val
        qy += [c] * len(val)
    return ef, np.array(ey), qf, np.array(qy)


def _check_rows(
    bundle: Path, split: tuple[list[Path], np.ndarray, list[Path], np.ndarray], weights: list[float]
) -> dict[float, tuple[float, float]]:
    """The training check's rows (its images are not in any protocol, so not cached)."""
    from device.embedder import Embedder

    ef, ey, qf, qy = split
    with Embedder(bundle) as embedder:
        ee = np.stack([embedder.embed(load_image(f)) for f in ef])
        qe = np.stack([embedder.embed(load_image(f)) for f in qf])
    return evaluate((ee, qe), (_histograms(ef), _histograms(qf)), (ey, qy), weights)


def trained_on_fold(bundle: Path, fold: Path) -> list[str]:
    """The fold's held-out classes the bundle's model was trained on (model.json `classes`)."""
    held = json.loads((fold / "protocol.json").read_text(encoding="utf-8"))["heldout_classes"]
    return sorted(set(read_bundle_meta(bundle).classes) & set(held))


def choose_weight(rows: dict[float, tuple[float, float]]) -> float:
    """The rule fixed before the fold was measured: the w with the highest P@1 + AUROC, the
    smaller w on a tie."""
    return min(rows, key=lambda w: (-(rows[w][0] + rows[w][1]), w))


def _table(rows: dict[str, dict[float, tuple[float, float]]], weights: list[float]) -> list[str]:
    names = list(rows)
    out = [
        "| w | " + " | ".join(f"{n} P@1 / AUROC" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for w in weights:
        cells = " | ".join(f"{rows[n][w][0]:.3f} / {rows[n][w][1]:.3f}" for n in names)
        out.append(f"| {w:g} | {cells} |")
    return out


def summary(
    results: dict[str, dict[str, dict[float, tuple[float, float]]]], weights: list[float]
) -> list[str]:
    """Per weight and set: min / median / max change from w = 0 over the bundles, P@1 and AUROC,
    and how many bundles gain (or hold) on every set."""
    names = list(next(iter(results.values())))
    out = [
        "| w | set | P@1 change: min / median / max | AUROC change: min / median / max |",
        "|---|---|---|---|",
    ]
    for w in weights:
        if w == 0.0:
            continue
        for name in names:
            cells = []
            for k in (0, 1):
                d = np.array([r[name][w][k] - r[name][0.0][k] for r in results.values()])
                cells.append(f"{d.min():+.3f} / {np.median(d):+.3f} / {d.max():+.3f}")
            out.append(f"| {w:g} | {name} | {cells[0]} | {cells[1]} |")
    sets = [n for n in names if n not in (TRAINING_ROW, FOLD_ROW)]  # checks are not sets
    for w in weights:
        if w == 0.0:
            continue
        holds = [
            all(r[n][w][k] >= r[n][0.0][k] for n in sets) for r in results.values() for k in (0, 1)
        ]
        p1, au = holds[0::2], holds[1::2]
        out.append(
            f"\nw = {w:g}: of {len(results)} bundles, P@1 equal or higher on every set "
            f"({', '.join(sets)}) for {sum(p1)}, AUROC for {sum(au)}, both for "
            f"{sum(a and b for a, b in zip(p1, au, strict=True))}."
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bundles", nargs="+", type=Path)
    domains.add_set_arguments(p)
    p.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    p.add_argument("--training-check", type=Path, metavar="GROCERY")
    p.add_argument(
        "--choose-on",
        type=Path,
        metavar="FOLD",
        help="also score an inner fold (bench/inner_fold.py; the bundles trained without its "
        "queries' products) and print the weight it chooses",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="also print, per weight and set, the change from w = 0 over all the bundles",
    )
    args = p.parse_args(argv)
    sets = domains.checked_sets(p, args)
    try:
        weights = [float(w) for w in args.weights.split(",") if w]
    except ValueError:
        weights = []
    if not weights or not all(0.0 <= w <= 1.0 for w in weights):
        p.error(f"--weights takes numbers in [0, 1] separated by commas, got {args.weights!r}")
    if args.choose_on and not (args.choose_on / "protocol.json").is_file():
        p.error(f"--choose-on takes an inner fold's folder (bench/inner_fold.py): {args.choose_on}")
    if args.training_check and not (args.training_check / "protocol.json").is_file():
        p.error(
            f"--training-check takes the grocery folder (with protocol.json): {args.training_check}"
        )

    print(f"`python bench/colour_mix.py {shlex.join(argv if argv is not None else sys.argv[1:])}`")
    if args.summary and 0.0 not in weights:
        p.error("--summary compares with w = 0: include 0 in --weights")
    hists = {name: _protocol_histograms(args.data, name, args.cache) for name in sets}
    results: dict[str, dict[str, dict[float, tuple[float, float]]]] = {}
    for bundle in args.bundles:
        rows = {}
        for name in sets:
            enroll, query = domains.embed_set(bundle, args.data, name, args.cache)
            rows[name] = evaluate(
                (enroll.emb, query.emb), hists[name], (enroll.labels, query.labels), weights
            )
        if args.training_check:
            rows[TRAINING_ROW] = _check_rows(bundle, training_split(args.training_check), weights)
        if args.choose_on:
            fold = args.choose_on.resolve()
            seen = trained_on_fold(bundle, fold)
            if seen:
                p.error(
                    f"{bundle} was trained on {len(seen)} of the fold's held-out classes (e.g. "
                    f"{seen[0]}): a choice made there is biased; train a fold model with "
                    f"`bench/default_model.py --data {args.choose_on}`"
                )
            enroll, query = domains.embed_set(bundle, fold.parent, fold.name, args.cache)
            rows[FOLD_ROW] = evaluate(
                (enroll.emb, query.emb),
                _protocol_histograms(fold.parent, fold.name, args.cache),
                (enroll.labels, query.labels),
                weights,
            )
        results[str(bundle)] = rows
        print(f"\n`{bundle}` (w: the colour histogram's weight):\n")
        print("\n".join(_table(rows, weights)))
        if FOLD_ROW in rows:
            print(f"\nThe inner fold chooses w = {choose_weight(rows[FOLD_ROW]):g}.")
    if args.summary:
        print(f"\nOver the {len(results)} bundles, the change from w = 0:\n")
        print("\n".join(summary(results, weights)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
