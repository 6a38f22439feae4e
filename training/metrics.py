"""Recognition and open-set metrics on embeddings: pure numpy, no TensorFlow.

Conventions used throughout:
- Embeddings are L2-normalised, so cosine similarity is a dot product (`similarity` re-normalises
  defensively).
- A query's score for a product is its best similarity over that product's enrollment shots
  ("best view per product"), exactly what the device's matcher does.
- A query is accepted when its best product score is >= the threshold.
- Leave-class-out: every query of a known product also plays an unknown product, scored against the
  gallery without its own product; its best remaining score is what an unknown product would get.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The device's: training, convert and the device normalise embeddings one way.
from device.vectors import l2_normalize


def similarity(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix (Q, G) between query rows and gallery rows."""
    queries = np.atleast_2d(queries)
    gallery = np.atleast_2d(gallery)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"embedding sizes differ: queries have {queries.shape[1]} values, gallery "
            f"{gallery.shape[1]}; both must come from the same model"
        )
    return l2_normalize(queries) @ l2_normalize(gallery).T


def product_scores(sim: np.ndarray, gallery_labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Best similarity per product: (products in first-seen order, (Q, P) scores)."""
    sim = np.atleast_2d(np.asarray(sim, dtype=np.float32))
    labels = list(gallery_labels)
    if sim.shape[1] != len(labels):
        raise ValueError(f"{sim.shape[1]} gallery columns but {len(labels)} gallery labels")
    products = list(dict.fromkeys(labels))
    index = {p: i for i, p in enumerate(products)}
    cols = np.array([index[lab] for lab in labels])
    scores = np.full((sim.shape[0], len(products)), -np.inf, dtype=np.float32)
    if sim.shape[0]:
        for j in range(len(products)):
            scores[:, j] = sim[:, cols == j].max(axis=1)
    return products, scores


def predict(products: Sequence[str], scores: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Best product and its score for each query row."""
    idx = np.argmax(scores, axis=1)
    return [products[i] for i in idx], scores[np.arange(len(idx)), idx]


def precision_at_1(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Share of queries whose best-matching product is their own."""
    if len(predicted) != len(truth):
        raise ValueError("predicted and truth have different lengths")
    if not truth:
        raise ValueError("no queries")
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


def per_product_accuracy(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, float]:
    """P@1 of each true product (sorted by product name)."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for p, t in zip(predicted, truth, strict=True):
        total[t] += 1
        right[t] += p == t
    return {t: right[t] / total[t] for t in sorted(total)}


def confusion_pairs(
    predicted: Sequence[str], truth: Sequence[str], top: int = 10
) -> list[tuple[str, str, int]]:
    """Most frequent (true product, predicted product, count) mistakes, most frequent first."""
    counts = Counter((t, p) for p, t in zip(predicted, truth, strict=True) if p != t)
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(t, p, n) for (t, p), n in ordered[:top]]


def map_at_r(sim: np.ndarray, gallery_labels: Sequence[str], query_labels: Sequence[str]) -> float:
    """Mean average precision at R (Musgrave et al., 2020) of queries against the gallery.

    For a query with R gallery items of its own product, rank the gallery by similarity and take
    (1/R) * sum over the top R ranks i of precision@i * [item i is relevant]. Ties in similarity are
    broken by gallery order (stable sort). Queries whose product has no gallery item raise.
    """
    sim = np.atleast_2d(np.asarray(sim))
    glabels = np.asarray(list(gallery_labels))
    values = []
    for q, label in enumerate(query_labels):
        relevant = glabels == label
        r = int(relevant.sum())
        if r == 0:
            raise ValueError(f"query product {label!r} has no enrollment shot in the gallery")
        order = np.argsort(-sim[q], kind="stable")[:r]
        hits = relevant[order].astype(np.float64)
        precision = np.cumsum(hits) / np.arange(1, r + 1)
        values.append(float((precision * hits).sum() / r))
    return float(np.mean(values))


def leave_class_out(
    products: Sequence[str], scores: np.ndarray, query_labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: (best score, own-product score, best score without its own product).

    The first is what the query scores as a known product, the last what it would score had its
    product never been enrolled (an unknown). A product alone in the gallery gets -inf as its
    leave-class-out score (there is nothing else to match).
    """
    index = {p: i for i, p in enumerate(products)}
    missing = sorted({lab for lab in query_labels if lab not in index})
    if missing:
        raise ValueError(f"query products absent from the gallery: {missing}")
    own = np.array([index[lab] for lab in query_labels], dtype=int)
    rows = np.arange(len(own))
    best = scores.max(axis=1) if len(own) else np.zeros(0, np.float32)
    genuine = scores[rows, own]
    others = scores.copy()
    others[rows, own] = -np.inf
    impostor = others.max(axis=1) if scores.shape[1] > 1 else np.full(len(own), -np.inf)
    return best, genuine, impostor


def p_at_1_and_auroc(
    products: Sequence[str], scores: np.ndarray, truth: Sequence[str]
) -> tuple[float, float]:
    """(P@1, leave-class-out AUROC) from (Q, P) product scores, as `training evaluate` reports
    them."""
    predicted, _ = predict(products, scores)
    best, _, impostor = leave_class_out(products, scores, truth)
    return precision_at_1(predicted, list(truth)), auroc(best, impostor)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(positive score > negative score), ties counted as 1/2.

    Computed from ranks (Mann-Whitney U), O(n log n)."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size, dtype=np.float64)
    sorted_v = allv[order]
    # average ranks over ties
    i = 0
    n = allv.size
    while i < n:
        j = i
        while j + 1 < n and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_curve(
    positive: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds) accepting score >= threshold.

    Starts at (0, 0) with threshold +inf and ends at (1, 1)."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    pos_sorted = np.sort(pos)
    neg_sorted = np.sort(neg)
    tpr = (pos.size - np.searchsorted(pos_sorted, thresholds, side="left")) / max(pos.size, 1)
    fpr = (neg.size - np.searchsorted(neg_sorted, thresholds, side="left")) / max(neg.size, 1)
    return (
        np.concatenate([[0.0], fpr]),
        np.concatenate([[0.0], tpr]),
        np.concatenate([[np.inf], thresholds]),
    )


def false_accept_rate(impostor: np.ndarray, threshold: float) -> float:
    imp = np.asarray(impostor, dtype=np.float32).ravel()
    if imp.size == 0:
        raise ValueError("no impostor scores")
    # float32 scores compared in float64, as device.matcher does (`float(score) < threshold`).
    return float(np.mean(imp.astype(np.float64) >= float(threshold)))


def threshold_for_far(impostor: np.ndarray, target_far: float) -> float:
    """The smallest threshold whose false-accept rate on `impostor` is <= target_far.

    Accepting means score >= threshold, so with impostor scores sorted high to low s1 >= s2 >= ...
    and k = floor(target * n) allowed false accepts, the answer is the smallest float32 above s(k+1)
    (float32 because the device compares float32 scores), capped at 1.0, the largest cosine. With
    target >= 1 every score may be accepted and the answer is the lowest impostor score.
    """
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target false-accept rate must be within [0, 1], got {target_far}")
    imp = np.sort(np.asarray(impostor, dtype=np.float32).ravel())[::-1]
    n = imp.size
    if n == 0:
        raise ValueError("no impostor scores to calibrate a threshold on")
    if np.isnan(imp).any():
        raise ValueError("impostor scores contain NaN")
    allowed = math.floor(target_far * n + 1e-9)
    finite = imp[np.isfinite(imp)]  # -inf: a query with no other product it could be taken for
    if allowed >= finite.size:
        return float(finite[-1]) if finite.size else -1.0
    value = np.nextafter(finite[allowed], np.float32(np.inf), dtype=np.float32)
    # ties: several impostors at s(k+1) are excluded together, FAR can only be lower.
    # A threshold is a cosine: impostors at 1.0 (collapsed embeddings) cannot be excluded.
    return min(float(value), 1.0)


@dataclass(frozen=True)
class ThresholdRates:
    threshold: float
    accepted_right: float  # known queries accepted with the right product
    accepted_wrong: float  # known queries accepted with a wrong product
    rejected: float  # known queries rejected as unknown
    false_accept: float  # unknown queries accepted as some product
    n_known: int
    n_unknown: int


def rates_at_threshold(
    known_best: np.ndarray,
    known_predicted: Sequence[str],
    known_truth: Sequence[str],
    unknown_best: np.ndarray,
    threshold: float,
) -> ThresholdRates:
    """Outcome rates when accepting best score >= threshold."""
    # float32 scores compared in float64, as device.matcher does (`float(score) < threshold`).
    t = float(threshold)
    kb = np.asarray(known_best, dtype=np.float32).astype(np.float64)
    right = np.array([p == q for p, q in zip(known_predicted, known_truth, strict=True)], bool)
    accepted = kb >= t
    n_known = kb.size
    ub = np.asarray(unknown_best, dtype=np.float32).astype(np.float64)
    return ThresholdRates(
        threshold=float(threshold),
        accepted_right=float(np.mean(accepted & right)) if n_known else math.nan,
        accepted_wrong=float(np.mean(accepted & ~right)) if n_known else math.nan,
        rejected=float(np.mean(~accepted)) if n_known else math.nan,
        false_accept=float(np.mean(ub >= t)) if ub.size else math.nan,
        n_known=int(n_known),
        n_unknown=int(ub.size),
    )


@dataclass(frozen=True)
class MarginRates:
    """The device's three answers at a threshold and an ambiguity margin (device.matcher): a
    product ("known"), "ambiguous" (best two products closer than the margin) or "unknown"."""

    margin: float
    right: float  # known queries answered with their own product
    wrong: float  # known queries answered with another product
    ambiguous: float  # known queries answered "ambiguous"
    rejected: float  # known queries answered "unknown"
    false_accept: float  # unknown queries answered with a product (not "ambiguous")
    unknown_ambiguous: float  # unknown queries answered "ambiguous"


def _top_two(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (index of the best column, best score, second-best score; -inf without one)."""
    if scores.shape[1] == 0:
        n = scores.shape[0]
        return np.zeros(n, int), np.full(n, -np.inf), np.full(n, -np.inf)
    best_i = np.argmax(scores, axis=1)
    rows = np.arange(scores.shape[0])
    best = scores[rows, best_i]
    if scores.shape[1] == 1:
        return best_i, best, np.full(scores.shape[0], -np.inf)
    rest = scores.copy()
    rest[rows, best_i] = -np.inf
    return best_i, best, rest.max(axis=1)


def rates_with_margins(
    products: Sequence[str],
    scores: np.ndarray,
    query_labels: Sequence[str],
    threshold: float,
    margins: Sequence[float],
) -> list[MarginRates]:
    """Outcome rates of known queries (full gallery) and their leave-class-out unknowns (the
    gallery without their own product) for each ambiguity margin, as the device decides:
    unknown if best < threshold, else ambiguous if best - runner-up < margin, else the best."""
    index = {p: i for i, p in enumerate(products)}
    missing = sorted({lab for lab in query_labels if lab not in index})
    if missing:
        raise ValueError(f"query products absent from the gallery: {missing}")
    if not len(query_labels):
        raise ValueError("no queries to measure the margins on")
    own = np.array([index[lab] for lab in query_labels], dtype=int)
    rows = np.arange(len(own))
    # float32 scores, compared and subtracted in float64 as device.matcher does
    # (`float(score) - float(runner_up) < margin`).
    s = np.asarray(scores, dtype=np.float32).astype(np.float64)
    t = float(threshold)
    k_i, k_best, k_second = _top_two(s)
    others = s.copy()
    others[rows, own] = -np.inf
    _, u_best, u_second = _top_two(others)
    with np.errstate(invalid="ignore"):  # -inf - -inf: a query with no other product at all
        k_gap, u_gap = k_best - k_second, u_best - u_second
    k_acc = k_best >= t  # the threshold, then the margin: acceptance is the same for every margin
    u_acc = np.isfinite(u_best) & (u_best >= t)
    out = []
    for m in margins:
        mm = float(m)
        k_amb = k_acc & (k_gap < mm)
        k_known = k_acc & ~k_amb
        u_amb = u_acc & (u_gap < mm)
        out.append(
            MarginRates(
                margin=float(m),
                right=float(np.mean(k_known & (k_i == own))),
                wrong=float(np.mean(k_known & (k_i != own))),
                ambiguous=float(np.mean(k_amb)),
                rejected=float(np.mean(~k_acc)),
                false_accept=float(np.mean(u_acc & ~u_amb)),
                unknown_ambiguous=float(np.mean(u_amb)),
            )
        )
    return out
