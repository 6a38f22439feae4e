"""How a product's score is made from its enrollment shots, compared on saved benchmark embeddings.

    python bench/scoring.py runs/bench-softmax-224-long runs/bench-arcface-far05 ...

For each run folder written by `bench/grocery_protocol.py`, reads the int8 evaluation's
`eval-int8/embeddings.npz` (the device's own embeddings of the protocol's enrollment shots and
queries) and prints P@1 and leave-class-out AUROC with each way of scoring a product:

- `best view` (what the device and the protocol use): the best cosine over the product's shots;
- `top-2 mean`: the mean of its two best shots;
- `all-shot mean`: the mean cosine over all its shots;
- `prototype`: the cosine to the normalised mean of its shots' embeddings.

No model runs: it only re-scores stored embeddings. Prints a markdown table.
"""

from __future__ import annotations

import argparse
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


def compare(npz: Path) -> dict[str, tuple[float, float]]:
    """{scorer: (P@1, leave-class-out AUROC)} on one evaluation's saved embeddings."""
    z = np.load(npz)
    shots, labels = z["enroll"], np.asarray(z["enroll_labels"]).astype(str)
    queries, truth = z["query"], [str(x) for x in z["query_labels"]]
    products = sorted(set(labels))
    out = {}
    for name, scorer in SCORERS.items():
        scores = scorer(queries, shots, labels, products)
        predicted, _ = metrics.predict(products, scores)
        best, _, impostor = metrics.leave_class_out(products, scores, truth)
        out[name] = (metrics.precision_at_1(predicted, truth), metrics.auroc(best, impostor))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of bench/grocery_protocol.py")
    args = ap.parse_args()
    missing = [r for r in args.runs if not (r / "eval-int8" / "embeddings.npz").is_file()]
    if missing:
        print(f"no eval-int8/embeddings.npz in: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"`python bench/scoring.py {' '.join(map(str, args.runs))}` at commit {commit}\n")
    print("| run (int8) | " + " | ".join(f"{n}: P@1 / AUROC" for n in SCORERS) + " |")
    print("|---|" + "---|" * len(SCORERS))
    for run in args.runs:
        res = compare(run / "eval-int8" / "embeddings.npz")
        cells = " | ".join(f"{p:.3f} / {a:.3f}" for p, a in res.values())
        print(f"| `{run.name}` | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
