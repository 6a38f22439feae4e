"""Matching an embedding against the stored product views: cosine similarity, best view per product.

The views are L2-normalised once and sorted by product, so a query is one matrix-vector product
and two `argmax`: the best view names the best product; with that product's views masked out, the
next best view names the runner-up (each product scores by its best view). ~0.1 ms for 10,000
views of 128 dimensions. `product_scores` (every product's score, for evaluation) uses
`np.maximum.reduceat` over the same sorted views.

    "known"      best product's score >= threshold and ahead of the runner-up by >= the margin
    "ambiguous"  above the threshold but the best two products are closer than the margin
    "unknown"    best score below the threshold (or no products at all)

With `centre` (a mean embedding, see device/adaptation.py), views and queries are matched as
unit vectors of (x - centre): the scores are cosines of the centred embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import vectors

KNOWN, UNKNOWN, AMBIGUOUS = "known", "unknown", "ambiguous"


@dataclass(frozen=True)
class Match:
    label: str | None  # the recognised product; None when unknown or ambiguous
    status: str  # "known" | "unknown" | "ambiguous"
    score: float  # cosine similarity of the best product (its best view)
    best_label: str  # the best product even when rejected ("" when there are no products)
    runner_up: str | None
    runner_up_score: float | None


class Matcher:
    def __init__(
        self,
        embeddings: np.ndarray,
        labels: Sequence[str],
        *,
        threshold: float,
        ambiguity_margin: float = 0.0,
        centre: np.ndarray | None = None,
    ) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
        if len(labels) != emb.shape[0]:
            raise ValueError(f"{emb.shape[0]} embeddings but {len(labels)} labels")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if ambiguity_margin < 0:
            raise ValueError(f"ambiguity_margin must be >= 0, got {ambiguity_margin}")
        self.threshold = float(threshold)
        self.ambiguity_margin = float(ambiguity_margin)
        self.dim = emb.shape[1]
        self.centre = None if centre is None else np.asarray(centre, dtype=np.float32).reshape(-1)
        if self.centre is not None and self.centre.shape[0] != self.dim:
            raise ValueError(f"centre has {self.centre.shape[0]} values, the views {self.dim}")
        # Products in first-seen order; views grouped by product (stable sort keeps view order).
        order: dict[str, int] = {}
        codes = np.fromiter(
            (order.setdefault(lb, len(order)) for lb in labels), dtype=np.int64, count=len(labels)
        )
        self.products: list[str] = list(order)
        perm = np.argsort(codes, kind="stable")
        self._emb = np.ascontiguousarray(self._unit(emb[perm])) if len(perm) else emb
        sorted_codes = codes[perm]
        self._starts = (
            np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            if len(perm)
            else np.zeros(0, np.int64)
        )
        self._ends = np.r_[self._starts[1:], len(perm)].astype(np.int64)
        self._view_product = np.repeat(np.arange(len(self._starts)), self._ends - self._starts)

    def _unit(self, x: np.ndarray) -> np.ndarray:
        """Rows as the matcher compares them: unit vectors, centred when a centre is set."""
        return vectors.centre(x, self.centre)

    @property
    def n_views(self) -> int:
        return int(self._emb.shape[0])

    def __len__(self) -> int:
        return len(self.products)

    def product_scores(self, queries: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(products, (Q, P) best-view cosine similarity of each query to each product)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the stored views {self.dim}")
        if not self.products:
            return [], np.zeros((q.shape[0], 0), dtype=np.float32)
        sims = self._unit(q) @ self._emb.T
        return list(self.products), np.maximum.reduceat(sims, self._starts, axis=1)

    @property
    def view_labels(self) -> list[str]:
        """The product of each view, in the order of `view_scores`' columns."""
        return [self.products[i] for i in self._view_product]

    def view_scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) cosine of each query to each stored view, as `match` scores them."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, the stored views {self.dim}")
        return self._unit(q) @ self._emb.T

    def match(self, query: np.ndarray) -> Match:
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, the stored views {self.dim}")
        if not self.products:
            return Match(None, UNKNOWN, -1.0, "", None, None)
        q = self._unit(query)
        sims = self._emb @ q
        view = int(np.argmax(sims))
        best = int(self._view_product[view])
        score = float(sims[view])
        second, runner_score = -1, None
        if len(self.products) > 1:
            sims[self._starts[best] : self._ends[best]] = -np.inf  # the best product's views
            view2 = int(np.argmax(sims))
            second, runner_score = int(self._view_product[view2]), float(sims[view2])
        best_label = self.products[best]
        runner_up = self.products[second] if second >= 0 else None
        if score < self.threshold:
            return Match(None, UNKNOWN, score, best_label, runner_up, runner_score)
        if runner_score is not None and score - runner_score < self.ambiguity_margin:
            return Match(None, AMBIGUOUS, score, best_label, runner_up, runner_score)
        return Match(best_label, KNOWN, score, best_label, runner_up, runner_score)
