"""One benchmark over product domains: bundles through the device's own code, on every protocol.

    python bench/domains.py BUNDLE [BUNDLE ...] [--reference REF_BUNDLE]
        [--data ../shared/data] [--sets grocery,coil-dev,grozi-dev] [--cache runs/domain-cache]
        [--row] [--plot FILE.png [--plot-sets grocery,grozi-dev]] [--exposure-gain]
        [--false-accepts N] [--siblings]

For each bundle and each set (a `protocol.json` in the `training evaluate --protocol` format) the
images are embedded with `device.embedder.Embedder` (the int8 model, the device's preprocessing),
matched with the `device.matching.MatchingPolicy` the device builds from the bundle (centring,
matcher, threshold rule), and scored:

- P@1, MAP@R and leave-class-out AUROC of the matcher's scores, 4 enrollment shots per product;
- accepted-and-right and false accepts at the threshold the device would use. Known queries are
  matched against every product; a query as an unknown is matched against the gallery *without*
  its product, with the threshold (and centre) the device would have computed for that gallery:
  the product was never enrolled, so the device never saw it.
- the same with 2, 5 and 15 products enrolled (random draws; queries of enrolled products are the
  known ones, queries of every other product the unknowns).
- in hindsight, the most accepted-and-right any single threshold gives with false accepts <= 2%
  (chosen on the queries themselves: an upper bound for any fixed threshold, not a rule).

`--reference` is the ImageNet-features bundle measured in the same run, as a format-1 device
would use it (raw cosines, its calibrated threshold; pass it among the BUNDLEs too to see it with
the device's adaptation) (made by `python -m training
generalise imagenet` + `python -m convert`, see docs/BENCHMARKS.md). Embeddings are cached per
model id and set in --cache. Prints markdown tables; `--row` appends them to docs/BENCHMARKS.md
with the command and commit; `--plot` draws each model's P@1 and AUROC on one set against
another (where models trade one domain for the other). `--false-accepts N` lists, per set, the N
(unknown product -> enrolled product) pairs behind most false accepts. `--siblings` splits each
set's AUROC by the unknown's kind: with a same-brand product enrolled (the name's first word:
"Arla-Sour-Cream" and "Arla-Standard-Milk") or not. `--exposure-gain` is an
experiment, not a device step: an image darker than the training photos is brightened before
embedding until its 99th-percentile luminance reaches 170 (gain at most 4), the level 99.5% of the
grocery training images reach (400 of them measured); images at or above it are unchanged. It
measures how much of a domain's errors come from under-exposed photos.

coil-dev and grozi-dev are evaluation data only: nothing here trains, calibrates or selects on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device.adaptation import Centring  # noqa: E402
from device.bundle import read_bundle_meta, sha256_file  # noqa: E402
from device.embedder import Embedder  # noqa: E402
from device.images import load_image  # noqa: E402
from device.matching import MatchingPolicy  # noqa: E402
from training.metrics import (  # noqa: E402
    auroc,
    map_at_r,
    precision_at_1,
    predict,
    rates_at_threshold,
    threshold_for_far,
)
from training.protocol import read_protocol  # noqa: E402

SETS = ("grocery", "coil-dev", "grozi-dev")
SUBSETS = (2, 5, 15)
HINDSIGHT_FAR = 0.02  # the false-accept bound
DRAWS = 20
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"


@dataclass
class Split:
    labels: np.ndarray
    emb: np.ndarray


# The 99th-percentile luminance that 99.5% of the grocery training photos reach (400 measured):
# below it an image is darker than nearly all the photos the shipped recipe is trained on.
EXPOSURE_PERCENTILE, EXPOSURE_LEVEL, EXPOSURE_MAX_GAIN = 99.0, 170.0, 4.0


def exposure_gain(image_bgr: np.ndarray) -> np.ndarray:
    """Brighten an under-exposed BGR uint8 image: one gain on every pixel and channel, so that
    the EXPOSURE_PERCENTILE of its luminance reaches EXPOSURE_LEVEL (at most EXPOSURE_MAX_GAIN;
    never darkened)."""
    luma = image_bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    level = float(np.percentile(luma, EXPOSURE_PERCENTILE))
    gain = min(EXPOSURE_MAX_GAIN, EXPOSURE_LEVEL / max(level, 1.0))
    if gain <= 1.0:
        return image_bgr
    return np.clip(image_bgr.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def embed_set(
    bundle: Path, data: Path, name: str, cache: Path, *, exposure: bool = False
) -> tuple[Split, Split]:
    meta = read_bundle_meta(bundle)
    tag = (
        f"-exposure-p{EXPOSURE_PERCENTILE:g}-l{EXPOSURE_LEVEL:g}-x{EXPOSURE_MAX_GAIN:g}"
        if exposure
        else ""
    )
    # The protocol's digest too: a set re-made under the same name must not reuse stale rows.
    digest = sha256_file(data / name / "protocol.json")[:8]
    path = cache / f"{meta.model_id[:16]}-{name}-{digest}{tag}.npz"
    proto = read_protocol(data / name / "protocol.json")
    if path.is_file():
        z = np.load(path)
        return Split(z["ey"], z["ex"]), Split(z["qy"], z["qx"])
    out = {}
    with Embedder(bundle) as embedder:
        for key, split in (("e", proto.enroll), ("q", proto.query)):
            labels = [p for p, fs in split.items() for _ in fs]
            files = [f for fs in split.values() for f in fs]
            started = time.monotonic()
            load = (lambda f: exposure_gain(load_image(f))) if exposure else load_image
            out[f"{key}x"] = np.stack([embedder.embed(load(f)) for f in files])
            out[f"{key}y"] = np.array(labels)
            print(
                f"  {meta.name} {name} {key}: {len(files)} images in "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return Split(out["ey"], out["ex"]), Split(out["qy"], out["qx"])


def _scores(policy: MatchingPolicy, gallery: Split, queries: np.ndarray):
    matcher, decision = policy.build(gallery.emb, list(gallery.labels))
    products, scores = matcher.product_scores(queries)
    return products, scores, decision.value, matcher


def brand(product: str) -> str:
    """A product name's first word: its brand in the grocery set ("Arla-Sour-Cream" -> "Arla");
    names without one ("obj29", "grozi010") are their own brand."""
    return product.split("-", 1)[0]


def has_sibling(truth: list[str], products: list[str]) -> np.ndarray:
    """Per query: does its product share its brand with another product of the gallery?"""
    brands = Counter(brand(p) for p in products)
    return np.array([brands[brand(t)] > 1 for t in truth], dtype=bool)


def sibling_aurocs(
    known_best: np.ndarray, unknown_best: np.ndarray, truth: list[str], products: list[str]
) -> dict[str, tuple[float | None, int]]:
    """Leave-class-out AUROC split by the unknown's kind: every known score against the unknowns
    whose product has a same-brand sibling in the gallery ("sibling"), and against the others
    ("no sibling"). (AUROC or None when that group is empty, group size)."""
    sibling = has_sibling(truth, products)
    out: dict[str, tuple[float | None, int]] = {}
    for key, rows in (("sibling", sibling), ("no sibling", ~sibling)):
        n = int(rows.sum())
        out[key] = (auroc(known_best, unknown_best[rows]) if n else None, n)
    return out


def evaluate_all(policy: MatchingPolicy, enroll: Split, query: Split) -> dict[str, Any]:
    """All products enrolled; unknowns leave-class-out with the device's own threshold."""
    products, scores, threshold, matcher = _scores(policy, enroll, query.emb)
    predicted, best = predict(products, scores)
    truth = list(query.labels)
    index = {p: i for i, p in enumerate(products)}
    own = np.array([index[t] for t in truth])
    others = scores.copy()
    others[np.arange(len(own)), own] = -np.inf
    lco_same_gallery = others.max(axis=1)  # AUROC as training evaluate defines it
    sim, view_labels = matcher.view_scores(query.emb), matcher.view_labels
    right = np.array(predicted) == np.array(truth)
    # The unknown side: each product left out of the gallery, threshold recomputed without it.
    fa, thresholds = np.zeros(len(truth), bool), []
    unknown_best = np.zeros(len(truth), np.float32)
    unknown_to = np.empty(len(truth), dtype=object)  # the product each unknown matched
    for p in products:
        keep = enroll.labels != p
        rows = query.labels == p
        left, s, t, _ = _scores(
            policy, Split(enroll.labels[keep], enroll.emb[keep]), query.emb[rows]
        )
        unknown_best[rows] = s.max(axis=1)
        unknown_to[rows] = [left[i] for i in s.argmax(axis=1)]
        fa[rows] = unknown_best[rows] >= t
        thresholds.append(t)
    # Hindsight, not a rule a device could follow: the one threshold that accepts the most right
    # answers with at most HINDSIGHT_FAR false accepts, chosen on these very queries. It bounds
    # what any fixed threshold can reach with this model on this set.
    best_t = threshold_for_far(unknown_best, HINDSIGHT_FAR)
    hindsight = rates_at_threshold(best, predicted, truth, unknown_best, best_t)
    # The same with only the unknowns of a brand that has nothing else enrolled as negatives.
    sibling = has_sibling(truth, products)
    plain_unknowns = unknown_best[~sibling]
    no_sibling_hindsight = None
    if len(plain_unknowns):
        t = threshold_for_far(plain_unknowns, HINDSIGHT_FAR)
        rates = rates_at_threshold(best, predicted, truth, plain_unknowns, t)
        no_sibling_hindsight = (rates.accepted_right, t)
    return {
        "p_at_1": precision_at_1(predicted, truth),
        "map_at_r": map_at_r(sim, view_labels, truth),
        "auroc": auroc(best, lco_same_gallery),
        "threshold": threshold,
        "accepted_right": float(np.mean(right & (best >= threshold))),
        "false_accept": float(np.mean(fa)),
        "threshold_lco_range": (float(min(thresholds)), float(max(thresholds))),
        "hindsight_threshold": best_t,
        "hindsight_accepted_right": hindsight.accepted_right,
        "hindsight_false_accept": hindsight.false_accept,
        "auroc_by_sibling": sibling_aurocs(best, lco_same_gallery, truth, products),
        "false_accept_by_sibling": {
            key: float(np.mean(fa[rows])) if rows.any() else None
            for key, rows in (("sibling", sibling), ("no sibling", ~sibling))
        },
        "no_sibling_hindsight": no_sibling_hindsight,
        "false_accept_pairs": Counter(
            zip(query.labels[fa].tolist(), unknown_to[fa].tolist(), strict=True)
        ),
    }


def evaluate_subsets(
    policy: MatchingPolicy, enroll: Split, query: Split, n: int, seed: int = 0
) -> dict[str, float]:
    """`n` products enrolled (random draws): AR on their queries, FA on every other product's."""
    rng = np.random.default_rng(seed)
    all_products = sorted(set(enroll.labels))
    ar, fa, ts = [], [], []
    for _ in range(DRAWS):
        chosen = rng.choice(all_products, n, replace=False)
        g = np.isin(enroll.labels, chosen)
        known = np.isin(query.labels, chosen)
        products, s, t, _ = _scores(policy, Split(enroll.labels[g], enroll.emb[g]), query.emb)
        predicted, best = predict(products, s)
        right = np.array(predicted)[known] == query.labels[known]
        ar.append(float(np.mean(right & (best[known] >= t))))
        fa.append(float(np.mean(best[~known] >= t)))
        ts.append(t)
    return {"accepted_right": float(np.mean(ar)), "false_accept": float(np.mean(fa)), "t": ts}


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def add_set_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --sets and --cache, as every script that scores bundles on the sets takes them."""
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--sets", default=",".join(SETS), help="protocol folders in --data")
    p.add_argument("--cache", type=Path, default=ROOT / "runs" / "domain-cache")


def checked_sets(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """--sets as a list, each a folder of --data with a protocol.json (else a usage error)."""
    sets = [s for s in args.sets.split(",") if s]
    if not sets:
        p.error("--sets names at least one set")
    for name in sets:
        if not (args.data / name / "protocol.json").is_file():
            p.error(f"no {args.data / name / 'protocol.json'}: give --data the folder of the sets")
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bundles", nargs="+", type=Path, help="model bundles to measure")
    p.add_argument("--reference", type=Path, help="the ImageNet-features bundle")
    add_set_arguments(p)
    p.add_argument("--row", action="store_true", help="append the tables to docs/BENCHMARKS.md")
    p.add_argument(
        "--exposure-gain",
        action="store_true",
        help="experiment: brighten under-exposed images before embedding (not a device step)",
    )
    p.add_argument(
        "--false-accepts",
        type=int,
        default=0,
        metavar="N",
        help="list the N (unknown -> enrolled) product pairs behind most false accepts, per set",
    )
    p.add_argument(
        "--plot",
        type=Path,
        help="also draw each model's P@1 and AUROC, one set against another (--plot-sets), to PNG",
    )
    p.add_argument(
        "--plot-sets",
        default="grocery,grozi-dev",
        help="the two sets of --plot's axes (x,y): where the models trade one for the other",
    )
    p.add_argument(
        "--siblings",
        action="store_true",
        help="split each set's AUROC by whether the unknown has a same-brand product enrolled",
    )
    args = p.parse_args(argv)
    if args.false_accepts < 0:
        p.error(f"--false-accepts takes a count of pairs >= 0, got {args.false_accepts}")
    sets = checked_sets(p, args)
    plot_sets = args.plot_sets.split(",")
    if args.plot:
        if len(plot_sets) != 2 or not set(plot_sets) <= set(sets):
            p.error(f"--plot-sets takes two of --sets ({','.join(sets)}), e.g. grocery,grozi-dev")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install -r requirements-train.txt")
    runs = [(b, False) for b in args.bundles]
    if args.reference:
        runs.insert(0, (args.reference, True))
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, commit {_commit()}: "
        f"`python bench/domains.py {shlex.join(str(a) for a in (argv or sys.argv[1:]))}`",
        "",
        "| model | set | P@1 | MAP@R | AUROC | threshold (all enrolled) | accepted & right | "
        "false accepts | AR / FA, 2 products | 5 products | 15 products | hindsight: best AR "
        f"at FA <= {100 * HINDSIGHT_FAR:.0f}% (threshold) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    points: dict[str, dict[str, dict[str, float]]] = {}  # plot label -> set -> results
    notes: list[str] = []  # --false-accepts, after the table
    plot_labels = short_labels(runs)
    for bundle, plain in runs:
        meta = read_bundle_meta(bundle)
        policy = MatchingPolicy.from_bundle(bundle, meta)
        label = f"{meta.name} (`{bundle}`)"  # the path: seeds of one recipe share a name
        if plain:  # the reference as the issue measured it: raw cosines, the bundle's threshold
            policy = dataclasses.replace(policy, centring=Centring.none(), cohort=None)
            label += " (reference: raw cosine, calibrated threshold)"
        for name in sets:
            enroll, query = embed_set(
                bundle, args.data, name, args.cache, exposure=args.exposure_gain
            )
            r = evaluate_all(policy, enroll, query)
            points.setdefault(plot_labels[(bundle, plain)], {})[name] = r
            subs = []
            n_products = len(set(enroll.labels))
            for n in SUBSETS:
                if n >= n_products:
                    subs.append("-")
                    continue
                s = evaluate_subsets(policy, enroll, query, n)
                subs.append(f"{s['accepted_right']:.3f} / {100 * s['false_accept']:.1f}%")
            lo, hi = r["threshold_lco_range"]
            lines.append(
                f"| {label} | {name} | {r['p_at_1']:.3f} | {r['map_at_r']:.3f} | {r['auroc']:.3f} "
                f"| {r['threshold']:.3f} ({lo:.3f}-{hi:.3f} left out) | {r['accepted_right']:.3f} "
                f"| {100 * r['false_accept']:.1f}% | " + " | ".join(subs) + " | "
                f"{r['hindsight_accepted_right']:.3f} ({r['hindsight_threshold']:.3f}) |"
            )
            print(lines[-1], flush=True)
            if args.false_accepts > 0:
                notes.append(
                    _false_accept_note(label, name, r, len(query.labels), args.false_accepts)
                )
            if args.siblings:
                notes.append(_sibling_note(label, name, r))
    text = "\n".join(lines + notes) + "\n"
    print()
    print(text)
    if args.row:
        with BENCHMARKS_MD.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    if args.plot:
        x_set, y_set = plot_sets
        title = lines[0].split(": `")[0]  # "Run of <time> UTC, commit <commit>"
        plot_trade(points, x_set, y_set, args.plot, title=f"bench/domains.py: {title}")
        print(f"plot: {args.plot}")
    return 0


def _sibling_note(label: str, name: str, r: dict[str, Any]) -> str:
    """One line: AUROC and the device's false accepts against unknowns with and without a
    same-brand product enrolled, and the hindsight bound against the second kind alone."""
    parts = []
    for key, (value, n) in r["auroc_by_sibling"].items():
        shown = "-" if value is None else f"{value:.3f}"
        fa = r["false_accept_by_sibling"][key]
        fa_shown = (
            "" if fa is None else f" ({100 * fa:.1f}% false accepts at the device's threshold)"
        )
        parts.append(
            f"{shown} against the {n} unknowns with{'out' if key != 'sibling' else ''} "
            f"a same-brand product enrolled{fa_shown}"
        )
    line = f"\n{label}, {name}: AUROC {r['auroc']:.3f}; " + ", ".join(parts)
    if r["no_sibling_hindsight"] is not None:
        ar, t = r["no_sibling_hindsight"]
        line += (
            f"; hindsight against the unknowns without alone: {ar:.3f} accepted-and-right at "
            f"<= {100 * HINDSIGHT_FAR:.0f}% false accepts (threshold {t:.3f})"
        )
    return line


def _false_accept_note(label: str, name: str, r: dict[str, Any], n_queries: int, top_n: int) -> str:
    """One line: how many false accepts, and the `top_n` pairs that make most of them."""
    pairs: Counter[tuple[str, str]] = r["false_accept_pairs"]
    total = sum(pairs.values())
    top = pairs.most_common(top_n)
    listed = sum(n for _, n in top)
    plural = "" if total == 1 else "s"
    head = (
        f"\n{label}, {name}: {total} false accept{plural} "
        f"({100 * r['false_accept']:.1f}% of {n_queries} queries as unknowns)"
    )
    if not total:
        return head
    rows = ", ".join(f"{u} -> {k} x{n}" for (u, k), n in top)
    return f"{head}; the top {len(top)} pair(s) make {listed} ({100 * listed / total:.0f}%): {rows}"


def short_labels(runs: list[tuple[Path, bool]]) -> dict[tuple[Path, bool], str]:
    """A short, unique label per (bundle, is reference): its folder name (the run's, for
    RUN/bundle), numbered when two runs share one."""
    labels: dict[tuple[Path, bool], str] = {}
    for bundle, plain in runs:
        short = bundle.parent.name if bundle.name == "bundle" else bundle.name
        short += " (reference)" if plain else ""
        label, n = short, 2
        while label in labels.values():
            label, n = f"{short} #{n}", n + 1
        labels[(bundle, plain)] = label
    return labels


# The targets (P@1, AUROC) per set, drawn as dashed lines on --plot.
TARGETS = {"grocery": (0.90, 0.92), "coil-dev": (0.995, 0.98), "grozi-dev": (0.96, 0.96)}


def _label_offsets(xy: list[tuple[float, float]], step: float = -10.0) -> list[float]:
    """Vertical label offsets (points) so that labels of near-coincident points do not print on
    top of each other: a label within 20% of the x range and 3% of the y range of an earlier one
    moves down one line."""
    if not xy:
        return []
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    wx, wy = max(max(xs) - min(xs), 1e-9), max(max(ys) - min(ys), 1e-9)
    placed: list[tuple[float, float]] = []  # (x, y) of each label in range units, shift included
    offsets = []
    for x, y in xy:
        nx, ny, dy = (x - min(xs)) / wx, (y - min(ys)) / wy, 0.0
        while any(abs(nx - px) < 0.2 and abs(ny + dy / 300 - py) < 0.03 for px, py in placed):
            dy += step
        placed.append((nx, ny + dy / 300))
        offsets.append(dy)
    return offsets


def plot_trade(
    points: dict[str, dict[str, dict[str, float]]],
    x_set: str,
    y_set: str,
    out: Path,
    *,
    title: str,
) -> None:
    """Two panels (P@1, AUROC): each model a labelled point, x on one set, y on another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # No grey for models: grey is the reference's. tab20 gives 16 other colours.
    palette = [c for i, c in enumerate(plt.cm.tab20.colors) if i not in (14, 15)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, (key, name, k) in zip(
        axes, (("p_at_1", "P@1", 0), ("auroc", "AUROC (leave-class-out)", 1)), strict=True
    ):
        shown = [
            (label, by_set[x_set][key], by_set[y_set][key])
            for label, by_set in points.items()
            if x_set in by_set and y_set in by_set
        ]
        offsets = _label_offsets([(x, y) for _, x, y in shown])
        for i, ((label, x, y), dy) in enumerate(zip(shown, offsets, strict=True)):
            ref = label.endswith("(reference)")
            colour = "grey" if ref else palette[i % len(palette)]
            ax.scatter([x], [y], marker="s" if ref else "o", s=40, color=colour)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4 + dy), fontsize=8)
        for s, line in ((x_set, ax.axvline), (y_set, ax.axhline)):
            if s in TARGETS:
                line(TARGETS[s][k], linestyle="--", color="green", linewidth=0.8)
        ax.set_xlabel(f"{x_set} {name}")
        ax.set_ylabel(f"{y_set} {name}")
        ax.set_title(f"{name} (dashed: the targets; up and right is better)", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
