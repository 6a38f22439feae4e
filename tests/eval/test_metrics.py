"""Metric code against brute-force references on small hand-made embeddings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training import metrics
from training.calibrate import leave_class_out_threshold


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# A 2-D hand-made gallery: product A around 0 deg, B around 90 deg, C around 180 deg.
def _deg(*angles: float) -> np.ndarray:
    a = np.radians(angles)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


GALLERY = _deg(0, 10, 90, 100, 180)
GLABELS = ["A", "A", "B", "B", "C"]
QUERIES = _deg(5, 60, 135, 170, 95)
QLABELS = ["A", "A", "B", "C", "B"]


def _brute_best_per_product(q: np.ndarray, gallery: np.ndarray, glabels: list[str]) -> dict:
    best: dict[str, float] = {}
    for g, lab in zip(gallery, glabels, strict=True):
        s = float(np.dot(q, g))
        if lab not in best or s > best[lab]:
            best[lab] = s
    return best


def _random_set(seed: int, n_cls: int = 5, per: int = 4, dim: int = 8, noise: float = 0.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_cls, dim))
    x = np.concatenate([c + noise * rng.normal(size=(per, dim)) for c in centres])
    labels = [f"p{i}" for i in range(n_cls) for _ in range(per)]
    return metrics.l2_normalize(x), labels


def test_product_scores_and_p_at_1_match_brute_force() -> None:
    products, scores = metrics.product_scores(metrics.similarity(QUERIES, GALLERY), GLABELS)
    assert products == ["A", "B", "C"]
    for qi, q in enumerate(QUERIES):
        ref = _brute_best_per_product(q, GALLERY, GLABELS)
        for pj, p in enumerate(products):
            assert scores[qi, pj] == pytest.approx(ref[p], abs=1e-6)
    predicted, _ = metrics.predict(products, scores)
    # by hand: 5 -> A, 60 -> B (90 is closer than 10), 135 -> ? 100 (35) vs 180 (45) -> B,
    # 170 -> C, 95 -> B
    assert predicted == ["A", "B", "B", "C", "B"]
    assert metrics.precision_at_1(predicted, QLABELS) == pytest.approx(4 / 5)
    assert metrics.per_product_accuracy(predicted, QLABELS) == {"A": 0.5, "B": 1.0, "C": 1.0}
    assert metrics.confusion_pairs(predicted, QLABELS) == [("A", "B", 1)]


def _brute_map_at_r(sim: np.ndarray, glabels: list[str], qlabels: list[str]) -> float:
    total = 0.0
    for qi, lab in enumerate(qlabels):
        r = sum(g == lab for g in glabels)
        ranked = sorted(range(len(glabels)), key=lambda j: (-sim[qi, j], j))[:r]
        ap = 0.0
        hits = 0
        for i, j in enumerate(ranked, start=1):
            if glabels[j] == lab:
                hits += 1
                ap += hits / i
        total += ap / r
    return total / len(qlabels)


def test_map_at_r_hand_value_and_brute_force() -> None:
    # one query, R = 2: relevant at ranks 1 and 3 -> only rank 1 counts within R: (1/1)/2 = 0.5
    sim = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert metrics.map_at_r(sim, ["a", "b", "a", "b"], ["a"]) == pytest.approx(0.5)
    # relevant at ranks 1 and 2 -> 1.0; at ranks 2 and 3... R=2 -> (1/2)/2 = 0.25
    assert metrics.map_at_r(sim, ["a", "a", "b", "b"], ["a"]) == pytest.approx(1.0)
    assert metrics.map_at_r(sim, ["b", "a", "b", "a"], ["a"]) == pytest.approx(0.25)
    for seed in range(3):
        g, gl = _random_set(seed)
        q, ql = _random_set(seed + 10)
        sim = metrics.similarity(q, g)
        assert metrics.map_at_r(sim, gl, ql) == pytest.approx(_brute_map_at_r(sim, gl, ql))
    with pytest.raises(ValueError, match="no enrollment shot"):
        metrics.map_at_r(sim, gl, ["nope"])


def _brute_auroc(pos, neg) -> float:
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count_with_ties() -> None:
    assert metrics.auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert metrics.auroc([0.1], [0.9]) == 0.0
    assert metrics.auroc([0.5, 0.5], [0.5]) == 0.5
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos = np.round(rng.normal(0.5, 0.2, size=23), 1)  # rounding makes ties
        neg = np.round(rng.normal(0.3, 0.2, size=17), 1)
        assert metrics.auroc(pos, neg) == pytest.approx(_brute_auroc(pos, neg))
        fpr, tpr, _ = metrics.roc_curve(pos, neg)
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(pos, neg))


def test_leave_class_out_scores_match_brute_force() -> None:
    for seed in range(3):
        g, gl = _random_set(seed)
        q, ql = _random_set(seed + 20, per=3)
        products, scores = metrics.product_scores(metrics.similarity(q, g), gl)
        best, genuine, impostor = metrics.leave_class_out(products, scores, ql)
        for i, (qv, lab) in enumerate(zip(q, ql, strict=True)):
            own = max(float(qv @ gv) for gv, gl_ in zip(g, gl, strict=True) if gl_ == lab)
            other = max(float(qv @ gv) for gv, gl_ in zip(g, gl, strict=True) if gl_ != lab)
            assert genuine[i] == pytest.approx(own, abs=1e-6)
            assert impostor[i] == pytest.approx(other, abs=1e-6)
            assert best[i] == pytest.approx(max(own, other), abs=1e-6)
    with pytest.raises(ValueError, match="absent from the gallery"):
        metrics.leave_class_out(products, scores, ["zzz"] * len(ql))


def _brute_threshold(impostor: np.ndarray, target: float) -> float:
    imp = np.asarray(impostor, np.float32)
    cands = sorted(
        {float(v) for v in imp}
        | {float(np.nextafter(v, np.float32(np.inf), dtype=np.float32)) for v in imp}
    )
    for t in cands:  # ascending: the first that meets the target is the smallest
        if np.mean(imp >= np.float32(t)) <= target + 1e-12:
            return t
    raise AssertionError


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 1.0])
def test_threshold_for_far_is_smallest_meeting_target(target: float) -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 100, 333):
        imp = np.round(rng.uniform(-0.2, 0.9, size=n), 2).astype(np.float32)  # with ties
        t = metrics.threshold_for_far(imp, target)
        assert metrics.false_accept_rate(imp, t) <= target
        assert t == _brute_threshold(imp, target)


def test_threshold_for_far_hand_example_and_errors() -> None:
    imp = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], np.float32)
    t = metrics.threshold_for_far(imp, 0.1)  # one false accept allowed: just above 0.9
    assert np.float32(0.9) < np.float32(t) <= np.float32(0.9) + 1e-6
    assert metrics.false_accept_rate(imp, t) == pytest.approx(0.1)
    # identical embeddings: impostors at 1.0 cannot be excluded, the threshold stays a cosine
    assert metrics.threshold_for_far(np.ones(10, np.float32), 0.01) == 1.0
    with pytest.raises(ValueError):
        metrics.threshold_for_far(imp, 1.5)
    with pytest.raises(ValueError):
        metrics.threshold_for_far(np.array([]), 0.01)


def test_rates_at_threshold_brute_force() -> None:
    best = np.array([0.9, 0.8, 0.4, 0.7, 0.2])
    pred = ["a", "b", "a", "c", "c"]
    truth = ["a", "a", "a", "c", "c"]
    unknown = np.array([0.75, 0.5, 0.1, 0.65])
    r = metrics.rates_at_threshold(best, pred, truth, unknown, 0.6)
    # accepted (>= 0.6): 0.9 a right, 0.8 b wrong, 0.7 c right
    assert (r.accepted_right, r.accepted_wrong, r.rejected) == (0.4, 0.2, 0.4)
    assert r.false_accept == 0.5


def test_leave_class_out_calibration_matches_brute_force() -> None:
    emb, labels = _random_set(3, n_cls=6, per=5, noise=0.8)
    k = 3
    res = leave_class_out_threshold(emb, labels, target_far=0.1, gallery_shots=k)
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    genuine, impostor = [], []
    for i, lab in enumerate(labels):
        own = [j for j in by_class[lab] if j != i][:k]
        genuine.append(max(float(emb[i] @ emb[j]) for j in own))
        others = [j for c, idx in by_class.items() if c != lab for j in idx[:k]]
        impostor.append(max(float(emb[i] @ emb[j]) for j in others))
    assert res["n_genuine"] == res["n_impostor"] == len(labels)
    np.testing.assert_allclose(res["_scores"]["genuine"], genuine, atol=1e-6)
    np.testing.assert_allclose(res["_scores"]["impostor"], impostor, atol=1e-6)
    assert res["value"] == _brute_threshold(np.array(impostor, np.float32), 0.1)
    assert res["achieved_far"] <= 0.1
    assert res["genuine_accept_rate"] == pytest.approx(
        np.mean(np.array(genuine, np.float32) >= np.float32(res["value"]))
    )


def test_calibration_skips_classes_with_one_image_and_needs_two_classes() -> None:
    emb, labels = _random_set(4, n_cls=3, per=3)
    labels = [*labels[:-2], "solo", "solo2"]
    res = leave_class_out_threshold(emb, labels, target_far=0.2)
    assert res["skipped_classes"] == ["p2", "solo", "solo2"]  # p2 kept 1 image
    with pytest.raises(ValueError, match="at least 2 classes"):
        leave_class_out_threshold(emb[:4], ["a", "a", "b", "c"])


def test_similarity_rejects_size_mismatch() -> None:
    with pytest.raises(ValueError, match="embedding sizes differ"):
        metrics.similarity(np.ones((2, 4)), np.ones((3, 5)))


def test_numpy_scores_and_threshold_agree_with_device_matcher() -> None:
    matcher_mod = pytest.importorskip("device.matcher")
    g, gl = _random_set(5)
    q, ql = _random_set(6, per=3)
    products, scores = metrics.product_scores(metrics.similarity(q, g), gl)
    _, _, impostor = metrics.leave_class_out(products, scores, ql)
    t = metrics.threshold_for_far(impostor, 0.25)
    m = matcher_mod.Matcher(g, gl, threshold=t)
    d_products, d_scores = m.product_scores(q)
    assert list(d_products) == products
    np.testing.assert_allclose(d_scores, scores, atol=1e-6)
    predicted, best = metrics.predict(products, scores)
    for qi in range(len(q)):
        match = m.match(q[qi])
        assert match.best_label == predicted[qi]
        assert (match.status != "unknown") == bool(best[qi] >= np.float32(t))


def test_margin_outcomes_match_a_loop_and_the_device_matcher() -> None:
    from device.matcher import AMBIGUOUS, KNOWN, UNKNOWN, Matcher

    rng = np.random.default_rng(11)
    products = ["a", "b", "c", "d"]
    # One unit view per product, so the device's best-view score of a product is its cosine.
    views = metrics.l2_normalize(rng.normal(size=(4, 5)).astype(np.float32))
    queries = metrics.l2_normalize(
        views[rng.integers(0, 4, 60)] + 0.8 * rng.normal(size=(60, 5)).astype(np.float32)
    )
    truth = [products[i] for i in rng.integers(0, 4, 60)]  # some right, some wrong
    scores = queries @ views.T
    threshold, margins = 0.3, (0.0, 0.02, 0.1, 0.3)
    got = metrics.rates_with_margins(products, scores, truth, threshold, margins)

    def device(gallery: list[str], q: np.ndarray, m: float) -> tuple[str, str | None]:
        keep = [products.index(p) for p in gallery]
        match = Matcher(views[keep], gallery, threshold=threshold, ambiguity_margin=m).match(q)
        return match.status, match.label

    for rates, m in zip(got, margins, strict=True):
        counts = dict.fromkeys(("right", "wrong", "ambiguous", "rejected", "fa", "u_amb"), 0)
        for q, t in zip(queries, truth, strict=True):
            status, label = device(products, q, m)  # known query: the whole gallery
            if status == UNKNOWN:
                counts["rejected"] += 1
            elif status == AMBIGUOUS:
                counts["ambiguous"] += 1
            else:
                assert status == KNOWN
                counts["right" if label == t else "wrong"] += 1
            status, _ = device([p for p in products if p != t], q, m)  # its product left out
            counts["fa"] += status == KNOWN
            counts["u_amb"] += status == AMBIGUOUS
        n = len(truth)
        assert rates.right == pytest.approx(counts["right"] / n)
        assert rates.wrong == pytest.approx(counts["wrong"] / n)
        assert rates.ambiguous == pytest.approx(counts["ambiguous"] / n)
        assert rates.rejected == pytest.approx(counts["rejected"] / n)
        assert rates.false_accept == pytest.approx(counts["fa"] / n)
        assert rates.unknown_ambiguous == pytest.approx(counts["u_amb"] / n)
    # A wider margin only moves answers into "ambiguous"; nothing is rejected differently.
    assert [r.rejected for r in got] == [got[0].rejected] * len(got)
    assert got[0].ambiguous == 0.0 and got[-1].ambiguous > got[1].ambiguous
    assert all(abs(r.right + r.wrong + r.ambiguous + r.rejected - 1) < 1e-9 for r in got)


def test_margin_outcomes_with_one_product_have_no_runner_up() -> None:
    rates = metrics.rates_with_margins(["a"], np.array([[0.9], [0.1]]), ["a", "a"], 0.5, [0.5])
    assert rates[0].right == 0.5 and rates[0].rejected == 0.5 and rates[0].ambiguous == 0.0
    assert rates[0].false_accept == 0.0  # nothing else to be taken for


def test_margin_outcomes_at_the_boundaries() -> None:
    # Dyadic scores (exact in float32) on the boundaries: device.matcher accepts a best score
    # equal to the threshold and calls a gap equal to the margin a clear answer.
    products = ["a", "b", "c"]
    scores = np.array(
        [
            [
                0.75,
                0.5,
                0.0,
            ],  # a: gap == margin -> a (right); without a: b == threshold -> accepted
            [0.5, 0.25, 0.0],  # a: best == threshold -> a (right); without a: 0.25 -> unknown
            [0.7, 0.7, 0.0],  # b: a tie -> ambiguous; without b: a, clear -> accepted
            [0.49999, 0.1, 0.2],  # c: just under the threshold -> unknown, and without c too
            [0.75, 0.5625, 0.0],  # a: gap 0.1875 < margin -> ambiguous; without a: b accepted
        ],
        np.float32,
    )
    truth = ["a", "a", "b", "c", "a"]
    (r,) = metrics.rates_with_margins(products, scores, truth, 0.5, [0.25])
    assert (r.right, r.wrong, r.ambiguous, r.rejected) == (0.4, 0.0, 0.4, 0.2)
    assert (r.false_accept, r.unknown_ambiguous) == (0.6, 0.0)
    with pytest.raises(ValueError, match="absent from the gallery"):
        metrics.rates_with_margins(products, scores, ["a", "a", "b", "c", "z"], 0.5, [0.0])
    with pytest.raises(ValueError, match="no queries"):
        metrics.rates_with_margins(products, scores[:0], [], 0.5, [0.0])
