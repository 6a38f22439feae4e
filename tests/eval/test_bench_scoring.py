"""bench/scoring.py: its "best view" is the protocol's (and the device's) scoring, and its
prototype is the normalised mean of a product's shots, against loops over hand-made vectors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from device.matcher import Matcher
from training import metrics

REPO = Path(__file__).resolve().parents[2]


def _scoring():
    spec = importlib.util.spec_from_file_location("bench_scoring", REPO / "bench" / "scoring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
