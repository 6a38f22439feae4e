"""The unknown-product threshold the device sets by itself, from what it has enrolled.

A threshold calibrated on one product set does not transfer to another: how high a never-enrolled
product scores depends on how alike the shop's products are (docs/BENCHMARKS.md, "Product
domains"). So the device estimates, from its own gallery, the scores an unknown product would get,
and puts the threshold where only `target_far` of them pass:

- **gallery impostors**: each enrolled view scored against the *other* products' views (its own
  product left out): exactly what that product would score had it never been enrolled. This is
  the shop's own domain, but with few products it is a small sample.
- **cohort impostors**: the bundle's cohort (embeddings of training-domain images, never the
  shop's products, `model.json` adaptation.cohort_file) scored against the gallery: a large sample
  of "other things", from another domain.

The threshold is the higher of the two (1 - target_far) quantiles; the gallery's is estimated
as mean + z * std (a normal tail: stable with a few dozen samples, where an empirical 99th
percentile is the maximum). Below `MIN_PRODUCTS` products there are no gallery impostors and the
cohort's quantile is used alone; with no cohort either, the caller falls back to the bundle's
fixed threshold. All scores are those the matcher computes (centred cosines).

Threading: pure functions on arrays, called by whoever builds the matcher (the frame loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

MIN_PRODUCTS = 2
MIN_GALLERY_SAMPLES = 4


@dataclass(frozen=True)
class AdaptiveThreshold:
    value: float
    gallery: float | None  # the gallery impostors' estimate (None: too few products)
    cohort: float | None  # the cohort's estimate (None: no cohort)
    n_gallery: int
    n_cohort: int

    def explain(self) -> str:
        parts = []
        if self.gallery is not None:
            parts.append(f"{self.n_gallery} views against other products: {self.gallery:.3f}")
        if self.cohort is not None:
            parts.append(f"{self.n_cohort} cohort images: {self.cohort:.3f}")
        return "; ".join(parts)


def gallery_impostor_scores(views: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """For each view, its best score against the views of every other product (unit rows)."""
    views = np.asarray(views, dtype=np.float32)
    lab = np.asarray(list(labels))
    if len(lab) != len(views):
        raise ValueError(f"{len(views)} views but {len(lab)} labels")
    if len(set(lab.tolist())) < 2:
        return np.zeros(0, np.float32)
    sims = views @ views.T
    sims[lab[:, None] == lab[None, :]] = -np.inf
    return sims.max(axis=1)


def cohort_impostor_scores(views: np.ndarray, cohort: np.ndarray) -> np.ndarray:
    """For each cohort embedding, its best score against the gallery's views (unit rows)."""
    views = np.asarray(views, dtype=np.float32)
    if len(views) == 0 or cohort is None or len(cohort) == 0:
        return np.zeros(0, np.float32)
    return (np.asarray(cohort, dtype=np.float32) @ views.T).max(axis=1)


def normal_tail(scores: np.ndarray, target_far: float) -> float:
    """mean + z * std with z the (1 - target_far) quantile of the standard normal."""
    z = NormalDist().inv_cdf(1.0 - target_far)
    return float(np.mean(scores) + z * np.std(scores))


def adaptive_threshold(
    views: np.ndarray,
    labels: Sequence[str],
    cohort: np.ndarray | None,
    target_far: float,
) -> AdaptiveThreshold | None:
    """The threshold for this gallery (views and cohort already as the matcher compares them:
    unit, centred), or None when there is nothing to estimate it from."""
    if not 0.0 < target_far < 0.5:
        raise ValueError(f"target_far must be in (0, 0.5), got {target_far}")
    g = gallery_impostor_scores(views, labels)
    c = cohort_impostor_scores(views, cohort) if cohort is not None else np.zeros(0)
    g_value = normal_tail(g, target_far) if len(g) >= MIN_GALLERY_SAMPLES else None
    c_value = float(np.quantile(c, 1.0 - target_far)) if len(c) else None
    found = [v for v in (g_value, c_value) if v is not None]
    if not found:
        return None
    value = float(min(1.0, max(-1.0, max(found))))
    return AdaptiveThreshold(value, g_value, c_value, len(g), len(c))
