"""Normalising each product's score against its impostors: does it help unknown rejection?

    python bench/score_norm.py BUNDLE [BUNDLE ...] [--data ../shared/data]
        [--sets grocery,coil-dev,grozi-dev] [--cache runs/domain-cache]

Score normalisation (Z-norm in speaker and face verification) rescales each enrolled product's
scores by how high the *other* things score against it, so one threshold means the same for a
product with look-alikes as for one without. For each bundle and set, the device's int8
embeddings (bench/domains.py's cache) are matched with the device's own `Matcher` and centring
(`MatchingPolicy`), and each product's raw score s is replaced by (NORMS):

- `raw`: s (what the device does);
- `z`: (s - mean) / std of the product's gallery impostors (the other products' enrolled views
  scored against it);
- `mean`: s - that mean;  `max`: s - the highest of them;
- `cohort z`: (s - mean) / std of the bundle's cohort (training-domain images) scored against it.

Three figures per normalisation:
- P@1 when products are ranked by the normalised score;
- AUROC as the protocol defines it: a query as a known is its best score over all products, as
  an unknown its best score over the *other* products of the same gallery. Its own product is still enrolled there, and it shapes the other
  products' impostor statistics, so a normalisation can look better than it is;
- AUROC as the device would meet it: the unknown's product never enrolled (the gallery, its
  centre and every statistic rebuilt without it), the product identified by the raw score and
  accepted or rejected on the normalised one (identification unchanged: P@1 = raw).

coil-dev and grozi-dev are evaluation data only.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import domains  # noqa: E402  # bench/domains.py: the device's embeddings, cached

from device.bundle import read_bundle_meta  # noqa: E402
from device.matcher import Matcher  # noqa: E402
from device.matching import MatchingPolicy  # noqa: E402
from training.metrics import auroc  # noqa: E402

EPS = 1e-6


def impostor_scores(matcher: Matcher, views: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, P): each enrolled view's score against each product, NaN against its own product."""
    products, scores = matcher.product_scores(views)
    own = labels[:, None] == np.asarray(products)[None, :]
    return np.where(own, np.nan, scores)


def _z(s: np.ndarray, imp: np.ndarray) -> np.ndarray:
    return (s - np.nanmean(imp, axis=0)) / np.maximum(np.nanstd(imp, axis=0), EPS)


Norm = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
# (scores (Q, P), gallery impostors (N, P), cohort scores (M, P)) -> normalised (Q, P)
NORMS: dict[str, Norm] = {
    "raw": lambda s, imp, coh: s,
    "z": lambda s, imp, coh: _z(s, imp),
    "mean": lambda s, imp, coh: s - np.nanmean(imp, axis=0),
    "max": lambda s, imp, coh: s - np.nanmax(imp, axis=0),
    "cohort z": lambda s, imp, coh: _z(s, coh),  # type: ignore[arg-type]  # only with a cohort
}


def _gallery(
    policy: MatchingPolicy, views: np.ndarray, labels: np.ndarray
) -> tuple[Matcher, np.ndarray, np.ndarray | None]:
    """The device's matcher over these views, and each product's impostor and cohort scores."""
    matcher, _ = policy.build(views, list(labels))
    imp = impostor_scores(matcher, views, labels)
    coh = matcher.product_scores(policy.cohort)[1] if policy.cohort is not None else None
    return matcher, imp, coh


def evaluate(
    policy: MatchingPolicy,
    views: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    norms: dict[str, Norm] = NORMS,
) -> dict[str, tuple[float, float, float]]:
    """{norm: (P@1 ranked by it, protocol AUROC, device AUROC)}; see the module doc."""
    if len(set(labels.tolist())) < 3:
        # With one product left out, the one left would have no impostors to normalise against.
        raise ValueError("score normalisation needs a set of at least 3 products")
    matcher, imp, coh = _gallery(policy, views, labels)
    if coh is None:  # a bundle without a cohort (format 1): nothing to normalise against
        norms = {k: v for k, v in norms.items() if k != "cohort z"}
    products, raw = matcher.product_scores(queries)
    own = np.asarray(products)[None, :] == truth[:, None]
    if not own.any(axis=1).all():
        raise ValueError("every query's product must be enrolled")
    identified = raw.argmax(axis=1)
    rows = np.arange(len(truth))
    # The device's unknowns: each product left out of the gallery; identified by the raw score.
    left_out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = {}
    for p in products:
        keep, mine = labels != p, truth == p
        m2, imp2, coh2 = _gallery(policy, views[keep], labels[keep])
        raw2 = m2.product_scores(queries[mine])[1]
        left_out[p] = (mine, raw2, imp2, coh2)
    out: dict[str, tuple[float, float, float]] = {}
    for name, norm in norms.items():
        s = norm(raw, imp, coh)
        p_at_1 = float(np.mean(own[rows, s.argmax(axis=1)]))
        protocol = auroc(s.max(axis=1), np.where(own, -np.inf, s).max(axis=1))
        known = s[rows, identified]
        unknown = np.zeros(len(truth))
        for mine, raw2, imp2, coh2 in left_out.values():
            s2 = norm(raw2, imp2, coh2)
            unknown[mine] = s2[np.arange(len(s2)), raw2.argmax(axis=1)]
        out[name] = (p_at_1, protocol, auroc(known, unknown))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("bundles", nargs="+", type=Path)
    domains.add_set_arguments(p)
    args = p.parse_args(argv)
    sets = domains.checked_sets(p, args)
    print(f"`python bench/score_norm.py {shlex.join(argv if argv is not None else sys.argv[1:])}`")
    for bundle in args.bundles:
        policy = MatchingPolicy.from_bundle(bundle, read_bundle_meta(bundle))
        rows: dict[str, dict[str, tuple[float, float, float]]] = {}
        for name in sets:
            enroll, query = domains.embed_set(bundle, args.data, name, args.cache)
            rows[name] = evaluate(policy, enroll.emb, enroll.labels, query.emb, query.labels)
        print(f"\n`{bundle}` (P@1 ranked by the score / AUROC, protocol / AUROC, device):\n")
        print("| score | " + " | ".join(sets) + " |")
        print("|---|" + "---|" * len(sets))
        for norm in rows[sets[0]]:
            cells = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*rows[s][norm]) for s in sets)
            print(f"| {norm} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
