"""How well the stored products can be told apart, from their enrollment views alone.

The threshold that keeps unknown products out depends on how alike the enrolled products are
(docs/BENCHMARKS.md: a threshold calibrated on one product set does not transfer to another), and
the device is the one place that knows its own set. `check_products` looks at it the way the
matcher will:

- **own score** (leave-one-view-out): for each view, its best similarity to the product's other
  views; the product's lowest. A new placement of the product scores about this much, often less
  (another day, another angle), so a product whose own score is under the threshold will often be
  reported unknown: enroll more views of it.
- **nearest product**: the most similar other product and its best view-to-view similarity. That
  is what the product would score as an unknown had it never been enrolled; above the threshold,
  the two can be confused (or reported ambiguous).

The highest nearest-product score over the set is the smallest threshold that would reject every
product left out of its own gallery; shown as a reference point, not applied.

    python -m device products check [--json]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .vectors import l2_normalize


@dataclass(frozen=True)
class ProductCheck:
    name: str
    views: int
    own_score: float | None  # lowest leave-one-view-out score; None with a single view
    nearest: str | None  # the most similar other product; None when it is the only product
    nearest_score: float | None

    def flags(self, threshold: float) -> list[str]:
        out = []
        if self.views == 1:
            out.append(
                "one view only: a placement showing another side may be reported unknown; add "
                "views with `enroll --append`"
            )
        if self.own_score is not None and self.own_score < threshold:
            out.append(
                f"weak: its views match each other at {self.own_score:.3f}, under the threshold: "
                "a placement may be reported unknown; enroll more views or lower the threshold"
            )
        if self.nearest_score is not None and self.nearest_score >= threshold:
            out.append(f"look-alike of {self.nearest!r}: may be confused or reported ambiguous")
        return out


def check_products(embeddings: np.ndarray, labels: Sequence[str]) -> list[ProductCheck]:
    """One ProductCheck per product (first-seen order) from its views' embeddings."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(labels):
        raise ValueError(f"expected (N, D) embeddings for {len(labels)} labels, got {emb.shape}")
    names = list(dict.fromkeys(labels))
    codes = np.array([names.index(lb) for lb in labels]) if len(labels) else np.zeros(0, int)
    x = l2_normalize(emb)
    checks = []
    for i, name in enumerate(names):
        mine = np.flatnonzero(codes == i)
        sims = x[mine] @ x.T  # this product's views against all views: O(N) memory per product
        sims[np.arange(len(mine)), mine] = -np.inf  # a view never matches itself
        own = float(sims[:, mine].max(axis=1).min()) if len(mine) > 1 else None
        nearest, nearest_score = None, None
        if len(names) > 1:
            # Best view-to-view similarity with each other product.
            per_product = np.full(len(names), -np.inf, dtype=np.float32)
            np.maximum.at(per_product, codes, sims.max(axis=0))
            per_product[i] = -np.inf
            j = int(np.argmax(per_product))
            nearest, nearest_score = names[j], float(per_product[j])
        checks.append(ProductCheck(name, len(mine), own, nearest, nearest_score))
    return checks


def reject_all_threshold(checks: Sequence[ProductCheck]) -> float | None:
    """The highest nearest-product score: any threshold above it rejects every product that is
    left out of the gallery (None with fewer than two products)."""
    scores = [c.nearest_score for c in checks if c.nearest_score is not None]
    return max(scores) if scores else None
