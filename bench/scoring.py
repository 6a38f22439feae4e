"""How a product's score is made from its enrollment shots, compared on saved benchmark embeddings.

    python bench/scoring.py runs/bench-softmax-224-long runs/bench-arcface-far05 ...

For each run folder written by `bench/grocery_protocol.py`, reads the int8 evaluation's
`eval-int8/embeddings.npz` (the device's own embeddings of the protocol's enrollment shots and
queries) and prints P@1 and leave-class-out AUROC with each way of scoring a product:

- `best view` (what the device and the protocol use): the best cosine over the product's shots;
- `top-2 mean`: the mean of its two best shots;
- `all-shot mean`: the mean cosine over all its shots;
- `prototype`: the cosine to the normalised mean of its shots' embeddings.

With `--ensemble`, it instead scores (best view) the concatenation of the runs' L2-normalised
embeddings, every pair and all of them together: what running several models and averaging their
cosines would give (the runs must hold the same images in the same order).

No model runs: it only re-scores stored embeddings. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import metrics  # noqa: E402

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, list[str]], np.ndarray]


def _per_shot(reduce: Callable[[np.ndarray], np.ndarray]) -> Scorer:
    def score(queries: np.ndarray, shots: np.ndarray, labels: np.ndarray, products: list[str]):
        sims = queries @ shots.T
        return np.stack([reduce(sims[:, labels == p]) for p in products], axis=1)

    return score


def _prototype(queries: np.ndarray, shots: np.ndarray, labels: np.ndarray, products: list[str]):
    protos = metrics.l2_normalize(np.stack([shots[labels == p].mean(axis=0) for p in products]))
    return queries @ protos.T


SCORERS: dict[str, Scorer] = {
    "best view": _per_shot(lambda s: s.max(axis=1)),
    "top-2 mean": _per_shot(lambda s: np.sort(s, axis=1)[:, -2:].mean(axis=1)),
    "all-shot mean": _per_shot(lambda s: s.mean(axis=1)),
    "prototype": _prototype,
}


def _figures(
    scorer: Scorer, queries: np.ndarray, shots: np.ndarray, labels: np.ndarray, truth: list[str]
) -> tuple[float, float]:
    products = sorted(set(labels))
    return metrics.p_at_1_and_auroc(products, scorer(queries, shots, labels, products), truth)


def compare(npz: Path) -> dict[str, tuple[float, float]]:
    """{scorer: (P@1, leave-class-out AUROC)} on one evaluation's saved embeddings."""
    z = np.load(npz)
    shots, labels = z["enroll"], np.asarray(z["enroll_labels"]).astype(str)
    queries, truth = z["query"], [str(x) for x in z["query_labels"]]
    return {name: _figures(sc, queries, shots, labels, truth) for name, sc in SCORERS.items()}


def ensemble(npzs: list[Path]) -> tuple[float, float]:
    """(P@1, AUROC), best view, of the runs' normalised embeddings concatenated: the cosine of the
    result is the mean of the runs' cosines."""
    zs = [np.load(n) for n in npzs]
    keys = ("enroll_paths", "query_paths", "enroll_labels", "query_labels")
    for z, n in zip(zs, npzs, strict=True):
        absent = [k for k in keys if k not in z]
        if absent:
            raise ValueError(
                f"{n} has no {', '.join(absent)}: write it with `python -m training evaluate`"
            )
    for z, n in zip(zs[1:], npzs[1:], strict=True):
        if any(not np.array_equal(z[k], zs[0][k]) for k in keys):
            raise ValueError(
                f"{n} holds other images (or another order) than {npzs[0]}: evaluate both runs "
                "with the same --protocol (or --enroll, --query and --shots)"
            )
    k = np.float32(len(zs) ** -0.5)
    shots = np.hstack([metrics.l2_normalize(z["enroll"]) for z in zs]) * k
    queries = np.hstack([metrics.l2_normalize(z["query"]) for z in zs]) * k
    labels = np.asarray(zs[0]["enroll_labels"]).astype(str)
    truth = [str(x) for x in zs[0]["query_labels"]]
    return _figures(SCORERS["best view"], queries, shots, labels, truth)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of bench/grocery_protocol.py")
    ap.add_argument(
        "--ensemble", action="store_true", help="score the runs' embeddings concatenated instead"
    )
    args = ap.parse_args()
    missing = [r for r in args.runs if not (r / "eval-int8" / "embeddings.npz").is_file()]
    if missing:
        print(f"no eval-int8/embeddings.npz in: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    flag = " --ensemble" if args.ensemble else ""
    print(f"`python bench/scoring.py{flag} {' '.join(map(str, args.runs))}` at commit {commit}\n")
    if args.ensemble:
        npz = {r: r / "eval-int8" / "embeddings.npz" for r in args.runs}
        combos = [[r] for r in args.runs] + [list(c) for c in itertools.combinations(args.runs, 2)]
        if len(args.runs) > 2:
            combos.append(list(args.runs))
        print("| runs (int8 embeddings concatenated) | P@1 | AUROC (leave-class-out) |")
        print("|---|---|---|")
        for combo in combos:
            p1, roc = ensemble([npz[r] for r in combo])
            print(f"| {' + '.join(f'`{r.name}`' for r in combo)} | {p1:.3f} | {roc:.3f} |")
        return 0
    print("| run (int8) | " + " | ".join(f"{n}: P@1 / AUROC" for n in SCORERS) + " |")
    print("|---|" + "---|" * len(SCORERS))
    for run in args.runs:
        res = compare(run / "eval-int8" / "embeddings.npz")
        cells = " | ".join(f"{p:.3f} / {a:.3f}" for p, a in res.values())
        print(f"| `{run.name}` | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
