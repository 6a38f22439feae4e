"""The adaptive unknown-threshold and the matching policy against naive numpy references."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from device.adaptation import Centring
from device.matching import ADAPTIVE, BUNDLE, FIXED, MatchingPolicy
from device.threshold_rule import (
    adaptive_threshold,
    cohort_impostor_scores,
    gallery_impostor_scores,
    normal_tail,
)


def unit(x: np.ndarray) -> np.ndarray:
    return np.array([r / np.linalg.norm(r) for r in np.atleast_2d(x)], np.float32)


def naive_gallery_impostors(views: np.ndarray, labels: list[str]) -> list[float]:
    out = []
    for i, (v, lb) in enumerate(zip(views, labels, strict=True)):
        others = [
            float(v @ w) for j, (w, lw) in enumerate(zip(views, labels, strict=True)) if lw != lb
        ]
        if others:
            out.append(max(others))
        assert i >= 0
    return out


def test_gallery_impostors_equal_naive() -> None:
    rng = np.random.default_rng(0)
    views = unit(rng.normal(size=(11, 6)))
    labels = ["a", "a", "b", "c", "c", "c", "d", "b", "a", "d", "e"]
    np.testing.assert_allclose(
        gallery_impostor_scores(views, labels), naive_gallery_impostors(views, labels), atol=1e-6
    )
    # One product: no view has another product to be taken for.
    assert len(gallery_impostor_scores(views[:2], ["a", "a"])) == 0
    with pytest.raises(ValueError, match="labels"):
        gallery_impostor_scores(views, labels[:3])


def test_cohort_impostors_equal_naive() -> None:
    rng = np.random.default_rng(1)
    views, cohort = unit(rng.normal(size=(5, 4))), unit(rng.normal(size=(7, 4)))
    want = [max(float(c @ v) for v in views) for c in cohort]
    np.testing.assert_allclose(cohort_impostor_scores(views, cohort), want, atol=1e-6)
    assert len(cohort_impostor_scores(views[:0], cohort)) == 0


def test_normal_tail() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.4])
    z = NormalDist().inv_cdf(0.99)
    assert normal_tail(s, 0.01) == pytest.approx(s.mean() + z * s.std())


def test_adaptive_threshold_takes_the_higher_estimate() -> None:
    rng = np.random.default_rng(2)
    views = unit(rng.normal(size=(12, 8)))
    labels = [f"p{i // 3}" for i in range(12)]
    cohort = unit(rng.normal(size=(200, 8)))
    got = adaptive_threshold(views, labels, cohort, 0.01)
    assert got is not None
    g = normal_tail(np.array(naive_gallery_impostors(views, labels)), 0.01)
    c = float(np.quantile([max(float(x @ v) for v in views) for x in cohort], 0.99))
    assert got.gallery == pytest.approx(g, abs=1e-5)
    assert got.cohort == pytest.approx(c, abs=1e-5)
    assert got.value == pytest.approx(max(g, c), abs=1e-5)
    assert got.n_gallery == 12 and got.n_cohort == 200
    # One product: the cohort alone; nothing at all: None (the caller falls back).
    one = adaptive_threshold(views[:3], labels[:3], cohort, 0.01)
    assert one is not None and one.gallery is None and one.value == pytest.approx(one.cohort)
    assert adaptive_threshold(views[:3], labels[:3], None, 0.01) is None
    with pytest.raises(ValueError, match="target_far"):
        adaptive_threshold(views, labels, cohort, 0.0)


def test_more_alike_products_get_a_higher_threshold() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=8)
    apart = unit(rng.normal(size=(10, 8)))
    alike = unit(base + 0.3 * rng.normal(size=(10, 8)))
    labels = [f"p{i // 2}" for i in range(10)]
    t_apart = adaptive_threshold(apart, labels, None, 0.01)
    t_alike = adaptive_threshold(alike, labels, None, 0.01)
    assert t_apart is not None and t_alike is not None
    assert t_alike.value > t_apart.value


def _policy(**kw: object) -> MatchingPolicy:
    defaults: dict[str, object] = {
        "centring": Centring.none(),
        "cohort": None,
        "target_far": 0.01,
        "bundle_threshold": 0.6,
    }
    defaults.update(kw)
    return MatchingPolicy(**defaults)  # type: ignore[arg-type]


def test_policy_sources_in_order() -> None:
    rng = np.random.default_rng(4)
    views = unit(rng.uniform(0, 1, size=(8, 5)))
    labels = ["a", "a", "b", "b", "c", "c", "d", "d"]
    # Format-1 bundle: the bundle's threshold, nothing centred.
    m, d = _policy().build(views, labels)
    assert (d.source, d.value, m.centre) == (BUNDLE, 0.6, None)
    # The configuration's threshold always wins.
    m, d = _policy(fixed_threshold=0.3).build(views, labels)
    assert (d.source, d.value) == (FIXED, 0.3)
    # Format 2: centred on the blend, threshold from the gallery (centred as the matcher scores).
    prior = unit(np.ones(5))[0]
    cohort = unit(rng.uniform(0, 1, size=(50, 5)))
    pol = _policy(centring=Centring(prior, 4.0), cohort=cohort)
    m, d = pol.build(views, labels)
    assert d.source == ADAPTIVE and "4 product(s)" in d.reason
    w = 8 / 12
    np.testing.assert_allclose(m.centre, w * views.mean(0) + (1 - w) * prior, atol=1e-6)
    cv = unit(views - m.centre)
    cc = unit(cohort - m.centre)
    want = adaptive_threshold(cv, labels, cc, 0.01)
    assert want is not None and d.value == pytest.approx(want.value, abs=1e-6)
    assert m.threshold == pytest.approx(d.value)
    # Too small a gallery and no cohort: the bundle's threshold, saying why.
    m, d = _policy(centring=Centring(prior, 4.0)).build(views[:2], labels[:2])
    assert d.source == BUNDLE and "too few products" in d.reason
    # No products at all: an empty matcher of the bundle's embedding size.
    m, d = pol.build(np.zeros((0, 5), np.float32), [])
    assert len(m) == 0 and m.dim == 5
