"""The margin math against a naive per-element numpy reference at known angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training.heads import CosineLayer, MarginLoss, get_head  # noqa: E402
from training.heads.arcface import arcface_target  # noqa: E402
from training.heads.cosface import cosface_target  # noqa: E402
from training.heads.sphereface import sphereface_psi, sphereface_target  # noqa: E402


def margin_logits(cos, labels, head: str, scale: float, margin: float, **options):  # type: ignore[no-untyped-def]
    return get_head(head).logits(cos, labels, scale, margin, **options)


# Angles across [0, pi], including theta + m > pi for ArcFace's m = 0.5 (theta > pi - 0.5).
THETAS = np.array(
    [0.0, 0.1, math.pi / 6, math.pi / 4, math.pi / 3, math.pi / 2, 2.0, 2.5, 2.7, 3.0, 3.1, math.pi]
)


def ref_arcface(theta: float, m: float) -> float:
    # insightface: cos(theta + m) while theta + m <= pi, else cos(theta) - m * sin(m).
    if theta + m <= math.pi:
        return math.cos(theta + m)
    return math.cos(theta) - m * math.sin(m)


def ref_psi(theta: float, m: int) -> float:
    k = min(math.floor(m * theta / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def ref_ce(logits: np.ndarray, label: int) -> float:
    z = logits - logits.max()
    return float(-(z[label] - math.log(np.exp(z).sum())))


def _t(x: np.ndarray) -> tf.Tensor:
    return tf.constant(np.asarray(x, np.float32))


@pytest.mark.parametrize("m", [0.5, 0.3])
def test_arcface_target_matches_reference_including_past_pi(m: float) -> None:
    got = arcface_target(_t(np.cos(THETAS)), m).numpy()
    want = [ref_arcface(t, m) for t in THETAS]
    # atol: cos is clamped to 1 - 1e-7 (float32) so sin(theta) stays differentiable at theta = 0.
    np.testing.assert_allclose(got, want, atol=5e-4)
    assert any(t + m > math.pi for t in THETAS)  # the fallback branch is exercised


def test_arcface_target_is_monotonic_in_theta() -> None:
    thetas = np.linspace(0, math.pi, 2001)
    got = arcface_target(_t(np.cos(thetas)), 0.5).numpy()
    assert np.all(np.diff(got) <= 1e-6)  # never rises again after theta + m passes pi


def test_arcface_easy_margin_only_where_cos_positive() -> None:
    got = arcface_target(_t(np.cos(THETAS)), 0.5, easy_margin=True).numpy()
    want = [math.cos(t + 0.5) if math.cos(t) > 0 else math.cos(t) for t in THETAS]
    np.testing.assert_allclose(got, want, atol=5e-4)


def test_cosface_target() -> None:
    got = cosface_target(_t(np.cos(THETAS)), 0.35).numpy()
    np.testing.assert_allclose(got, [math.cos(t) - 0.35 for t in THETAS], atol=1e-6)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_sphereface_psi_matches_reference_and_is_monotonic(m: int) -> None:
    got = sphereface_psi(_t(np.cos(THETAS)), m).numpy()
    np.testing.assert_allclose(got, [ref_psi(t, m) for t in THETAS], atol=2e-3)
    thetas = np.linspace(0, math.pi, 2001)
    dense = sphereface_psi(_t(np.cos(thetas)), m).numpy()
    assert np.all(np.diff(dense) <= 1e-4)
    assert dense[-1] == pytest.approx(-(2 * m - 1), abs=1e-2)  # psi(pi) = -(2m - 1)


def test_sphereface_target_blends_with_lambda() -> None:
    lam = 5.0
    got = sphereface_target(_t(np.cos(THETAS)), 4, lam).numpy()
    want = [(lam * math.cos(t) + ref_psi(t, 4)) / (1 + lam) for t in THETAS]
    np.testing.assert_allclose(got, want, atol=2e-3)


@pytest.mark.parametrize(
    ("head", "scale", "margin", "target"),
    [
        ("arcface", 64.0, 0.5, lambda t: ref_arcface(t, 0.5)),
        ("cosface", 64.0, 0.35, lambda t: math.cos(t) - 0.35),
        ("sphereface", 64.0, 4.0, lambda t: (5 * math.cos(t) + ref_psi(t, 4)) / 6),
        ("normface", 30.0, 0.0, math.cos),
    ],
)
def test_logits_and_loss_match_numpy_loop(head: str, scale: float, margin: float, target) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    n, c = len(THETAS), 5
    thetas = rng.uniform(0, math.pi, size=(n, c))
    labels = rng.integers(0, c, size=n)
    thetas[np.arange(n), labels] = THETAS  # the label's angle is one of the known angles
    cos = np.cos(thetas)
    want_logits = np.empty_like(cos)
    want_loss = np.empty(n)
    for i in range(n):
        for j in range(c):
            value = target(thetas[i, j]) if j == labels[i] else cos[i, j]
            want_logits[i, j] = scale * value
        want_loss[i] = ref_ce(want_logits[i], labels[i])
    got_logits = margin_logits(_t(cos), tf.constant(labels), head, scale, margin).numpy()
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=0.15)
    loss = MarginLoss(head, scale, margin, reduction=None)
    got_loss = loss(tf.constant(labels), _t(cos)).numpy()
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-3, atol=0.15)


def test_margin_raises_the_loss_of_the_right_class() -> None:
    cos = _t(np.array([[0.9, 0.1, -0.2]]))
    y = tf.constant([0])
    plain = float(MarginLoss("normface", 4.0, 0.0)(y, cos))
    for head, m in (("arcface", 0.5), ("cosface", 0.35), ("sphereface", 4.0)):
        assert float(MarginLoss(head, 4.0, m)(y, cos)) > plain


def test_cosine_layer_outputs_cosines() -> None:
    rng = np.random.default_rng(1)
    layer = CosineLayer(4)
    x = rng.normal(size=(3, 8)).astype(np.float32)
    out = layer(x).numpy()
    w = layer.kernel.numpy()
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(out, want, atol=1e-5)
