"""bench/scoring.py: its "best view" is the protocol's (and the device's) scoring, and its
prototype is the normalised mean of a product's shots, against loops over hand-made vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.matcher import Matcher
from tests.scripts import load_script
from training import metrics


def _scoring():
    return load_script("bench/scoring.py", "bench_scoring")


def test_scorers_against_loops(tmp_path: Path) -> None:
    scoring = _scoring()
    rng = np.random.default_rng(3)
    shots = metrics.l2_normalize(rng.normal(size=(9, 6)).astype(np.float32))
    labels = np.array(["a", "a", "a", "b", "b", "c", "c", "c", "c"])
    queries = metrics.l2_normalize(rng.normal(size=(5, 6)).astype(np.float32))
    products = ["a", "b", "c"]
    best = scoring.SCORERS["best view"](queries, shots, labels, products)
    device_products, device_scores = Matcher(shots, list(labels), threshold=0.0).product_scores(
        queries
    )
    order = [list(device_products).index(p) for p in products]
    assert np.allclose(best, np.asarray(device_scores)[:, order], atol=1e-6)
    proto = scoring.SCORERS["prototype"](queries, shots, labels, products)
    for j, p in enumerate(products):
        mean = shots[labels == p].sum(axis=0)
        mean /= np.linalg.norm(mean)
        for i, q in enumerate(queries):
            assert abs(proto[i, j] - float(q @ mean)) < 1e-5
    np.savez(
        tmp_path / "e.npz",
        enroll=shots,
        enroll_labels=labels,
        query=queries,
        query_labels=np.array(["a", "b", "c", "a", "c"]),
    )
    result = scoring.compare(tmp_path / "e.npz")
    assert set(result) == set(scoring.SCORERS)
    assert all(0.0 <= p <= 1.0 and 0.0 <= a <= 1.0 for p, a in result.values())


def test_ensemble_is_the_mean_of_the_runs_cosines(tmp_path: Path) -> None:
    scoring = _scoring()
    rng = np.random.default_rng(5)
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    truth = np.array(["a", "b", "c", "c", "a"])
    names = {
        "enroll_labels": labels,
        "enroll_paths": np.array([f"e{j}.jpg" for j in range(6)]),
        "query_labels": truth,
        "query_paths": np.array([f"q{j}.jpg" for j in range(5)]),
    }
    runs = []
    for i in range(2):
        shots = rng.normal(size=(6, 4 + i)).astype(np.float32)  # other sizes: other models
        queries = rng.normal(size=(5, 4 + i)).astype(np.float32)
        np.savez(tmp_path / f"{i}.npz", enroll=shots, query=queries, **names)
        runs.append((metrics.l2_normalize(shots), metrics.l2_normalize(queries)))
    # The naive reference: average the two runs' cosine matrices, best shot per product.
    mean_cos = sum(q @ s.T for s, q in runs) / 2
    products = ["a", "b", "c"]
    scores = np.stack([mean_cos[:, labels == p].max(axis=1) for p in products], axis=1)
    predicted = [products[j] for j in scores.argmax(axis=1)]
    p1 = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    best, _, impostor = metrics.leave_class_out(products, scores, list(truth))
    got = scoring.ensemble([tmp_path / "0.npz", tmp_path / "1.npz"])
    assert abs(got[0] - p1) < 1e-9 and abs(got[1] - metrics.auroc(best, impostor)) < 1e-9
    shuffled = {**names, "enroll_paths": names["enroll_paths"][::-1]}
    np.savez(tmp_path / "other.npz", enroll=runs[0][0], query=runs[0][1], **shuffled)
    with pytest.raises(ValueError, match="other images"):
        scoring.ensemble([tmp_path / "0.npz", tmp_path / "other.npz"])
    np.savez(tmp_path / "bare.npz", enroll=runs[0][0], query=runs[0][1])
    with pytest.raises(ValueError, match="has no enroll_paths"):
        scoring.ensemble([tmp_path / "0.npz", tmp_path / "bare.npz"])
