"""The bundle's adaptation block (format 2) written by convert, checked against the device's own
embeddings; and `training generalise`'s weight interpolation against a naive reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convert.calibration import balanced_selection, load_images
from device.adaptation import Centring, load_cohort
from device.bundle import read_bundle_meta
from device.embedder import Embedder
from device.matching import ADAPTIVE, MatchingPolicy


@pytest.fixture(scope="module")
def adapted_bundle(tmp_path_factory: pytest.TempPathFactory, micro_run_dir: Path, fixture_dir):
    from convert import convert_run

    out = tmp_path_factory.mktemp("adapted") / "bundle"
    return convert_run(
        micro_run_dir,
        out,
        "float32",
        fixture_dir / "train",
        max_images=40,
        parity_dir=fixture_dir / "test",
        latency_runs=2,
        latency_threads=(1,),
        adapt=True,
        cohort_size=12,
    )


def test_adaptation_is_the_bundles_own_embeddings(adapted_bundle: Path, fixture_dir: Path) -> None:
    meta = read_bundle_meta(adapted_bundle)
    assert meta.format_version == 2 and meta.adaptation is not None
    images = load_images(balanced_selection(fixture_dir / "train", 40)).images
    with Embedder(adapted_bundle) as embedder:
        naive = np.stack([embedder.embed(im) for im in images])
    np.testing.assert_allclose(meta.adaptation.domain_mean, naive.mean(axis=0), atol=1e-5)
    cohort = load_cohort(adapted_bundle, meta)
    assert cohort is not None and cohort.shape == (12, naive.shape[1])
    # Each cohort row is one of the images' embeddings (float16 in the file).
    nearest = (cohort @ naive.T).max(axis=1)
    assert nearest.min() > 0.999
    data = json.loads((adapted_bundle / "model.json").read_text())
    assert data["adaptation"]["cohort_file"] == "cohort.npy"
    # The device builds an adaptive policy from it.
    policy = MatchingPolicy.from_bundle(adapted_bundle, meta)
    assert Centring.from_meta(meta).enabled
    labels = [f"p{i // 2}" for i in range(8)]
    matcher, decision = policy.build(naive[:8], labels)
    assert decision.source == ADAPTIVE and len(matcher) == 4


def test_projection_runs_are_not_adapted_by_default(micro_bundles: dict[str, Path]) -> None:
    meta = read_bundle_meta(micro_bundles["float32"])
    assert meta.adaptation is None
    assert not (micro_bundles["float32"] / "cohort.npy").exists()


def test_interpolate_equals_naive_blend() -> None:
    from training.generalise import interpolate

    rng = np.random.default_rng(0)
    a = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    b = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    got = interpolate(a, b, 0.25)
    for g, x, y in zip(got, a, b, strict=True):
        np.testing.assert_allclose(g, 0.75 * x + 0.25 * y)
    np.testing.assert_allclose(interpolate(a, b, 0.0)[1], a[1])
    np.testing.assert_allclose(interpolate(a, b, 1.0)[1], b[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="differ"):
        interpolate(a, b[:1], 0.5)
    with pytest.raises(ValueError, match="differ"):
        interpolate(a, [b[0], rng.normal(size=5)], 0.5)


def test_generalise_refuses_a_run_not_from_imagenet(tiny_run_dir: Path, tmp_path: Path) -> None:
    from training.generalise import write_generalised_run

    with pytest.raises(ValueError, match="not trained from ImageNet"):
        write_generalised_run(tiny_run_dir, tmp_path / "out", alpha=0.5)
    assert not (tmp_path / "out").exists()
