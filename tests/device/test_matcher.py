"""The matcher against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from device.matcher import AMBIGUOUS, KNOWN, UNKNOWN, Matcher


def brute_force(emb: np.ndarray, labels: list[str], q: np.ndarray) -> dict[str, float]:
    best: dict[str, float] = {}
    qn = q / np.linalg.norm(q)
    for e, lb in zip(emb, labels, strict=True):
        s = float(np.dot(e / np.linalg.norm(e), qn))
        best[lb] = max(best.get(lb, -2.0), s)
    return best


def test_match_equals_brute_force_on_interleaved_views() -> None:
    rng = np.random.default_rng(0)
    n_products, dim = 30, 16
    labels = [f"p{int(i)}" for i in rng.integers(0, n_products, size=200)]  # views interleaved
    emb = rng.normal(size=(200, dim)).astype(np.float32) * rng.uniform(0.5, 3, size=(200, 1))
    m = Matcher(emb, labels, threshold=0.0, ambiguity_margin=0.0)
    first_seen = list(dict.fromkeys(labels))
    assert m.products == first_seen
    queries = rng.normal(size=(25, dim)).astype(np.float32)
    products, scores = m.product_scores(queries)
    assert products == first_seen
    for qi, q in enumerate(queries):
        ref = brute_force(emb, labels, q)
        np.testing.assert_allclose(scores[qi], [ref[p] for p in products], rtol=1e-5, atol=1e-6)
        match = m.match(q)
        ranked = sorted(ref.items(), key=lambda kv: -kv[1])
        assert match.best_label == ranked[0][0]
        assert match.score == pytest.approx(ranked[0][1], abs=1e-5)
        assert match.runner_up == ranked[1][0]
        assert match.runner_up_score == pytest.approx(ranked[1][1], abs=1e-5)


def test_unknown_ambiguous_known() -> None:
    e = np.eye(3, dtype=np.float32)
    m = Matcher(e, ["a", "b", "c"], threshold=0.5, ambiguity_margin=0.1)
    known = m.match(np.array([1.0, 0.2, 0.0]))
    assert (known.status, known.label, known.best_label, known.runner_up) == (KNOWN, "a", "a", "b")
    unknown = m.match(np.array([0.3, 0.3, 1.0]) * np.array([1, 1, -1]))
    assert unknown.status == UNKNOWN and unknown.label is None and unknown.score < 0.5
    amb = m.match(np.array([1.0, 0.95, 0.0]))
    assert amb.status == AMBIGUOUS and amb.label is None and amb.best_label == "a"
    assert amb.score - amb.runner_up_score < 0.1


def test_single_product_and_empty() -> None:
    m = Matcher(np.ones((2, 4), np.float32), ["only", "only"], threshold=0.9, ambiguity_margin=0.5)
    r = m.match(np.ones(4))
    assert r.status == KNOWN and r.runner_up is None and r.runner_up_score is None
    empty = Matcher(np.zeros((0, 4), np.float32), [], threshold=0.5)
    r = empty.match(np.ones(4))
    assert r.status == UNKNOWN and r.best_label == "" and r.label is None
    products, scores = empty.product_scores(np.ones((3, 4)))
    assert products == [] and scores.shape == (3, 0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        Matcher(np.ones((3, 4)), ["a"], threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        Matcher(np.ones((1, 4)), ["a"], threshold=1.5)
    with pytest.raises(ValueError, match="dimensions"):
        Matcher(np.ones((1, 4)), ["a"], threshold=0.5).match(np.ones(5))
