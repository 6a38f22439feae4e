"""Centring (device/adaptation.py) and the centred matcher against naive numpy references."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from device.adaptation import Centring, blend_weight, centre_vector, load_cohort
from device.bundle import bundle_files, read_bundle_meta
from device.errors import BundleError
from device.matcher import Matcher
from device.matching import MatchingPolicy
from device.vectors import centre, l2_normalize

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


def naive_unit(v: np.ndarray) -> np.ndarray:
    return np.array([row / np.linalg.norm(row) for row in np.atleast_2d(v)])


def test_blend_weight_boundaries() -> None:
    assert blend_weight(0, 50) == 0.0
    assert blend_weight(50, 50) == 0.5
    assert blend_weight(3, 0) == 1.0
    assert blend_weight(150, 50) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="n_views"):
        blend_weight(-1, 5)
    with pytest.raises(ValueError, match="prior_views"):
        blend_weight(1, -5)


def test_centre_vector_matches_naive_blend() -> None:
    rng = np.random.default_rng(1)
    views = rng.uniform(0, 1, size=(6, 5)).astype(np.float32)
    prior = naive_unit(rng.uniform(0, 1, size=5))[0]
    got = centre_vector(views, prior, prior_views=2.0)
    w = 6 / (6 + 2.0)
    want = w * naive_unit(views).mean(axis=0) + (1 - w) * prior
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # No views: the prior alone; no prior: the views' own mean; neither: nothing to centre on.
    np.testing.assert_allclose(centre_vector(views[:0], prior, 2.0), prior)
    np.testing.assert_allclose(centre_vector(views, None, 2.0), naive_unit(views).mean(0), 1e-5)
    assert centre_vector(views[:0], None, 2.0) is None
    with pytest.raises(ValueError, match="another model"):
        centre_vector(views, prior[:3], 2.0)


def test_centre_is_unit_of_difference() -> None:
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    mu = np.array([0.1, 0.2, 0.3], np.float32)
    want = naive_unit(naive_unit(x) - mu)
    np.testing.assert_allclose(centre(x, mu), want, rtol=1e-6)
    np.testing.assert_allclose(centre(x, None), naive_unit(x), rtol=1e-6)


def test_l2_normalize_rows_axis_and_zero_row() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 1.0]], np.float64)
    got = l2_normalize(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[[0, 2]], naive_unit(x[[0, 2]]), rtol=1e-6)
    assert np.all(got[1] == 0.0)  # nothing to scale: stays zero, no NaN
    cols = l2_normalize(x.T, axis=0)
    np.testing.assert_allclose(cols.T[[0, 2]], naive_unit(x[[0, 2]]), rtol=1e-6)


def test_centred_matcher_equals_brute_force() -> None:
    rng = np.random.default_rng(2)
    # Non-negative features with a strong common component, like pooled CNN features.
    common = rng.uniform(0.5, 1.0, size=12)
    emb = (common + 0.3 * rng.uniform(0, 1, size=(40, 12))).astype(np.float32)
    labels = [f"p{i % 7}" for i in range(40)]
    mu = Centring(naive_unit(common)[0].astype(np.float32), 10.0).mean_for(emb)
    m = Matcher(emb, labels, threshold=0.0, centre=mu)
    queries = (common + 0.3 * rng.uniform(0, 1, size=(9, 12))).astype(np.float32)
    products, scores = m.product_scores(queries)
    ce, cq = naive_unit(naive_unit(emb) - mu), naive_unit(naive_unit(queries) - mu)
    for qi in range(len(queries)):
        for pj, p in enumerate(products):
            ref = max(float(cq[qi] @ ce[k]) for k, lb in enumerate(labels) if lb == p)
            assert scores[qi, pj] == pytest.approx(ref, abs=1e-5)
        match = m.match(queries[qi])
        assert match.score == pytest.approx(float(scores[qi].max()), abs=1e-5)
    # Centring spreads the scores: raw cosines of such features are all close to 1.
    raw = Matcher(emb, labels, threshold=0.0).product_scores(queries)[1]
    assert raw.min() > 0.9 and scores.min() < 0.5
    with pytest.raises(ValueError, match="centre has 3 values"):
        Matcher(emb, labels, threshold=0.0, centre=np.zeros(3, np.float32))


def test_format_1_bundle_has_no_centring(tmp_path: Path) -> None:
    """A bundle of format 1 (no adaptation block) still loads, and matches as before."""
    data = json.loads((DEFAULT / "model.json").read_text())
    data.pop("adaptation", None)
    data["format_version"] = 1
    bundle = tmp_path / "v1"
    bundle.mkdir()
    (bundle / "model.tflite").symlink_to(DEFAULT / "model.tflite")
    (bundle / "model.json").write_text(json.dumps(data))
    meta = read_bundle_meta(bundle)
    assert meta.format_version == 1 and meta.adaptation is None
    assert not Centring.from_meta(meta).enabled
    assert load_cohort(bundle, meta) is None
    policy = MatchingPolicy.from_bundle(bundle, meta)
    m, decision = policy.build(np.eye(3, meta.output.embedding_dim, dtype=np.float32), list("abc"))
    assert m.centre is None and decision.value == meta.threshold
    assert decision.source == "the model bundle"
    # A format this device does not know is refused with what to do.
    data["format_version"] = 3
    (bundle / "model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="update the device software"):
        read_bundle_meta(bundle)


def _bundle_with_cohort(tmp_path: Path, cohort: np.ndarray, sha: str | None = None) -> Path:
    data = json.loads((DEFAULT / "model.json").read_text())
    dim = data["output"]["embedding_dim"]
    bundle = tmp_path / "b"
    bundle.mkdir(parents=True)
    (bundle / "model.tflite").symlink_to(DEFAULT / "model.tflite")
    np.save(bundle / "cohort.npy", cohort)
    raw = (bundle / "cohort.npy").read_bytes()
    data["format_version"] = 2
    data["adaptation"] = {
        "domain_mean": [0.0] * dim,
        "prior_views": 20,
        "cohort_file": "cohort.npy",
        "cohort_sha256": sha or hashlib.sha256(raw).hexdigest(),
        "target_far": 0.01,
    }
    (bundle / "model.json").write_text(json.dumps(data))
    return bundle


def test_cohort_loads_and_is_checked(tmp_path: Path) -> None:
    dim = json.loads((DEFAULT / "model.json").read_text())["output"]["embedding_dim"]
    cohort = np.random.default_rng(0).normal(size=(5, dim)).astype(np.float16)
    bundle = _bundle_with_cohort(tmp_path, cohort)
    meta = read_bundle_meta(bundle, verify_model_id=False)
    assert meta.format_version == 2 and meta.adaptation is not None
    assert Centring.from_meta(meta).prior_views == 20
    got = load_cohort(bundle, meta)
    assert got is not None and got.shape == (5, dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # An altered cohort file is refused, saying what to do.
    np.save(bundle / "cohort.npy", cohort[:4])
    with pytest.raises(BundleError, match="copy the whole bundle"):
        load_cohort(bundle, meta)
    bad = _bundle_with_cohort(tmp_path / "x", np.zeros((3, dim + 1), np.float16))
    with pytest.raises(BundleError, match="expected"):
        load_cohort(bad, read_bundle_meta(bad, verify_model_id=False))


def test_bundle_files_and_a_missing_or_foreign_cohort(tmp_path: Path) -> None:
    """The bundle's reader (and so deploy-model.sh) refuses a bundle whose cohort was not copied
    or comes from another conversion, before the service would."""
    dim = json.loads((DEFAULT / "model.json").read_text())["output"]["embedding_dim"]
    cohort = np.zeros((3, dim), np.float16)
    bundle = _bundle_with_cohort(tmp_path, cohort)
    meta = read_bundle_meta(bundle)
    assert bundle_files(meta) == ("model.json", "model.tflite", "cohort.npy")
    assert bundle_files(read_bundle_meta(DEFAULT)) == ("model.json", "model.tflite", "cohort.npy")
    np.save(bundle / "cohort.npy", cohort[:2])
    with pytest.raises(BundleError, match="cohort_sha256"):
        read_bundle_meta(bundle)
    (bundle / "cohort.npy").unlink()
    with pytest.raises(BundleError, match="copy the whole bundle folder"):
        read_bundle_meta(bundle)
    read_bundle_meta(bundle, verify_model_id=False)  # the quick read checks no file contents


def test_adaptation_fields_are_checked(tmp_path: Path) -> None:
    dim = json.loads((DEFAULT / "model.json").read_text())["output"]["embedding_dim"]
    bundle = _bundle_with_cohort(tmp_path, np.zeros((2, dim), np.float16))
    data = json.loads((bundle / "model.json").read_text())
    for change, field in [
        (lambda a: a.update(domain_mean=[0.0] * (dim - 1)), "domain_mean"),
        (lambda a: a.update(prior_views=-1), "prior_views"),
        (lambda a: a.update(target_far=0.7), "target_far"),
        (lambda a: a.update(cohort_file="../x.npy"), "cohort_file"),
        (lambda a: a.update(surprise=1), "surprise"),
    ]:
        d = json.loads(json.dumps(data))
        change(d["adaptation"])
        (bundle / "model.json").write_text(json.dumps(d))
        with pytest.raises(BundleError, match=field):
            read_bundle_meta(bundle, verify_model_id=False)


def test_products_check_says_which_threshold_and_why(tmp_path: Path, capsys) -> None:
    """With a format-2 bundle, `products check` reports the adaptive threshold and why; with one
    product and no cohort it falls back to the bundle's threshold, saying so."""
    from device import cli

    dim = json.loads((DEFAULT / "model.json").read_text())["output"]["embedding_dim"]
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "grocery" / "train"
    tree = tmp_path / "photos"
    for product in ("Banana", "Oatly-Oat-Milk", "Red-Bell-Pepper"):
        (tree / product).mkdir(parents=True)
        for src in sorted((fixture / product).glob("*.jpg"))[:3]:
            (tree / product / src.name).write_bytes(src.read_bytes())
    rng = np.random.default_rng(0)
    bundle = _bundle_with_cohort(tmp_path, rng.normal(size=(40, dim)).astype(np.float16))
    args = ["--model", str(bundle), "--db", str(tmp_path / "g.db")]
    assert cli.main(["enroll", *args, "--from-images", str(tree)]) == 0
    capsys.readouterr()
    assert cli.main(["products", "check", *args]) == 0
    err = capsys.readouterr().err
    assert "(from adaptive: 1% false accepts estimated from 3 product(s)" in err
    assert "40 cohort images" in err and "9 views against other products" in err
    # No cohort, one product: the bundle's calibrated threshold, and why.
    data = json.loads((bundle / "model.json").read_text())
    del data["adaptation"]["cohort_file"], data["adaptation"]["cohort_sha256"]
    (bundle / "model.json").write_text(json.dumps(data))
    one = ["--model", str(bundle), "--db", str(tmp_path / "one.db")]
    assert cli.main(["enroll", *one, "B", "--from-images", str(tree / "Banana")]) == 0
    capsys.readouterr()
    assert cli.main(["products", "check", *one]) == 0
    err = capsys.readouterr().err
    assert f"threshold {data['threshold']:.3f} (from the model bundle: too few products" in err
