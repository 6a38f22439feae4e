"""bench/score_norm.py against naive loops on small hand-made embeddings (centring and cohort
included), and end to end on the fixture protocol with the shipped bundle."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from device.adaptation import Centring
from device.matching import MatchingPolicy
from tests.eval.test_metrics import _brute_auroc
from tests.scripts import load_script


@pytest.fixture(scope="module")
def sn() -> ModuleType:
    return load_script("bench/score_norm.py", "bench_score_norm")


def _unit(x: np.ndarray) -> np.ndarray:
    # Written out here, not device.vectors: the reference must not share the code it checks.
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Naive:
    """The device's matching written out by hand for one gallery: the centre blended from the
    views' mean and the domain mean (prior k views), centred unit vectors, best view per product,
    and each product's impostor and cohort scores."""

    def __init__(
        self,
        views: np.ndarray,
        labels: np.ndarray,
        domain_mean: np.ndarray,
        k: float,
        cohort: np.ndarray,
    ) -> None:
        w = len(views) / (len(views) + k)
        self.mu = w * _unit(views).mean(axis=0) + (1 - w) * domain_mean
        self.views, self.labels = views, list(labels)
        self.products = sorted(set(self.labels))
        self.imp = {
            p: [self.score(v, p) for v, lab in zip(views, labels, strict=True) if lab != p]
            for p in self.products
        }
        self.coh = {p: [self.score(c, p) for c in cohort] for p in self.products}

    def _c(self, v: np.ndarray) -> np.ndarray:
        return _unit(_unit(v) - self.mu)

    def score(self, x: np.ndarray, product: str) -> float:
        views = [v for v, lab in zip(self.views, self.labels, strict=True) if lab == product]
        return max(float(self._c(x) @ self._c(v)) for v in views)

    def scores(self, x: np.ndarray, mode: str) -> dict[str, float]:
        out = {}
        for p in self.products:
            s = self.score(x, p)
            ref = {"z": self.imp[p], "cohort z": self.coh[p]}.get(mode)
            out[p] = s if ref is None else (s - np.mean(ref)) / max(float(np.std(ref)), 1e-6)
        return out


def _best(scores: dict[str, float]) -> str:
    return max(scores, key=scores.__getitem__)


@pytest.mark.parametrize("mode", ["raw", "z", "cohort z"])
def test_against_naive_loops(sn: ModuleType, mode: str) -> None:
    rng = np.random.default_rng(0)
    products = ["a", "b", "c", "d", "e", "f"]
    labels = np.repeat(products, 3)
    centres = rng.normal(size=(6, 6)) + 1.0  # a common component, as pooled features have
    spread = np.array([0.3, 0.3, 1.5, 1.5, 0.8, 0.8])[:, None]  # tight and loose products
    views = _unit(np.repeat(centres, 3, 0) + np.repeat(spread, 3, 0) * rng.normal(size=(18, 6)))
    truth = np.repeat(products, 2)
    noise = np.repeat(spread, 2, 0) * rng.normal(size=(12, 6))
    queries = _unit(np.repeat(centres, 2, 0) + noise)
    cohort = _unit(rng.normal(size=(30, 6)) + 1.0)
    domain_mean = 0.8 * _unit(np.ones(6))
    policy = MatchingPolicy(
        Centring(domain_mean.astype(np.float32), 10.0), cohort.astype(np.float32), 0.01, 0.5
    )
    got = sn.evaluate(policy, views, labels, queries, truth)[mode]

    full = Naive(views, labels, domain_mean, 10.0, cohort)
    raw = [full.scores(q, "raw") for q in queries]
    norm = [full.scores(q, mode) for q in queries]
    p1 = np.mean([_best(n) == t for n, t in zip(norm, truth, strict=True)])
    protocol = _brute_auroc(
        [max(n.values()) for n in norm],
        [max(v for p, v in n.items() if p != t) for n, t in zip(norm, truth, strict=True)],
    )
    # The device: identified by the raw score, decided by the normalised one; an unknown
    # against the gallery without its product, whose centre and statistics are its own.
    known = [n[_best(r)] for n, r in zip(norm, raw, strict=True)]
    unknown, decided_elsewhere, moved = [], 0, 0
    for q, t in zip(queries, truth, strict=True):
        keep = labels != t
        left = Naive(views[keep], labels[keep], domain_mean, 10.0, cohort)
        r, n = left.scores(q, "raw"), left.scores(q, mode)
        unknown.append(n[_best(r)])
        decided_elsewhere += _best(r) != _best(n)
        moved += not np.allclose(left.mu, full.mu)
    assert got[0] == pytest.approx(p1)
    assert got[1] == pytest.approx(protocol, abs=1e-9)
    assert got[2] == pytest.approx(_brute_auroc(known, unknown), abs=1e-9)
    assert moved == len(truth)  # every left-out gallery has a centre of its own
    if mode != "raw":
        assert decided_elsewhere  # the data tells "identify by raw" from "the best score" apart


def test_a_set_of_two_products_is_refused(sn: ModuleType) -> None:
    views = _unit(np.eye(4)[[0, 0, 1, 1]] + 0.1)
    policy = MatchingPolicy(Centring.none(), None, 0.01, bundle_threshold=0.5)
    with pytest.raises(ValueError, match="at least 3 products"):
        sn.evaluate(policy, views, np.array(list("aabb")), views, np.array(list("aabb")))


def test_end_to_end_on_the_fixture(
    sn: ModuleType,
    default_bundle_dir: Path,
    sets_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    argv = [str(default_bundle_dir), "--data", str(sets_dir), "--sets", "fix",
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert sn.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| " + n for n in sn.NORMS]
    with pytest.raises(SystemExit):
        sn.main([str(default_bundle_dir), "--data", str(tmp_path), "--sets", "fix"])
