"""bench/feature_depth.py's numeric parts against naive numpy references on hand-made features
(the Keras extraction itself is exercised by the benchmark run, docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def fd() -> ModuleType:
    return load_script("bench/feature_depth.py", "bench_feature_depth")


def unit(x: np.ndarray) -> np.ndarray:
    return np.array([r / np.linalg.norm(r) for r in x])


def test_mix_cosine_is_the_weighted_sum_of_the_parts(fd: ModuleType) -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(4, 6))), unit(rng.normal(size=(4, 3)))
    c, d = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(5, 3)))
    for w in (0.0, 0.25, 0.7, 1.0):
        got = fd.mix(a, b, w) @ fd.mix(c, d, w).T
        want = np.array(
            [[(1 - w) * a[i] @ c[j] + w * b[i] @ d[j] for j in range(5)] for i in range(4)]
        )
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(fd.mix(a, b, w), axis=1), 1.0, atol=1e-6)
    for bad in (-0.1, 1.01):
        with pytest.raises(ValueError, match="mixing weight"):
            fd.mix(a, b, bad)


def test_centre_on_gallery_is_unit_of_difference_to_the_gallery_mean(fd: ModuleType) -> None:
    enroll = np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    query = np.array([[1.0, 1.0, 1.0]])
    mu = unit(enroll).mean(axis=0)
    e, q = fd.centre_on_gallery(enroll, query)
    np.testing.assert_allclose(e, unit(unit(enroll) - mu), atol=1e-6)
    np.testing.assert_allclose(q, unit(unit(query) - mu), atol=1e-6)


def naive_score(e, ey, q, qy) -> tuple[float, float]:
    products = sorted(set(ey))
    s = np.array(
        [
            [
                max(
                    unit(q[i : i + 1])[0] @ unit(e[j : j + 1])[0]
                    for j in range(len(e))
                    if ey[j] == p
                )
                for p in products
            ]
            for i in range(len(q))
        ]
    )
    right = sum(products[int(np.argmax(s[i]))] == qy[i] for i in range(len(q)))
    known = s.max(axis=1)
    unknown = np.array(
        [max(s[i, k] for k, p in enumerate(products) if p != qy[i]) for i in range(len(q))]
    )
    pairs = [1.0 if k > u else 0.5 if k == u else 0.0 for k in known for u in unknown]
    return right / len(q), float(np.mean(pairs))


def test_score_matches_naive_p_at_1_and_leave_class_out_auroc(fd: ModuleType) -> None:
    rng = np.random.default_rng(3)
    ey = np.array(["a", "a", "b", "b", "c", "c"])
    centres = {p: rng.normal(size=5) for p in "abc"}
    e = np.stack([centres[p] + 0.3 * rng.normal(size=5) for p in ey])
    qy = np.array(["a", "b", "c", "a", "b", "c", "c"])
    q = np.stack([centres[p] + 0.9 * rng.normal(size=5) for p in qy])
    got = fd.score(e.astype(np.float32), ey, q.astype(np.float32), qy)
    want = naive_score(e, ey, q, qy)
    assert got[0] == pytest.approx(want[0])
    assert got[1] == pytest.approx(want[1], abs=1e-9)


def fake_feats(fd: ModuleType, sets: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    feats: dict[str, np.ndarray] = {}
    for name in sets:
        ey, qy = np.repeat(["p", "q", "r"], 2), np.array(["p", "q", "r", "r"])
        feats[f"{name}-ey"], feats[f"{name}-qy"] = ey, qy
        for layer in fd.LAYERS:
            dim = 4 if layer == fd.FINAL else 3
            centres = {p: rng.normal(size=dim) for p in "pqr"}
            feats[f"{name}-ex-{layer}"] = np.stack(
                [centres[p] + 0.4 * rng.normal(size=dim) for p in ey]
            )
            feats[f"{name}-qx-{layer}"] = np.stack(
                [centres[p] + 1.0 * rng.normal(size=dim) for p in qy]
            )
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in feats.items()}


def test_mix_ends_equal_the_layers_alone(fd: ModuleType) -> None:
    sets = ["one", "two"]
    by_layer, by_weight = fd.evaluate(fake_feats(fd, sets), sets, "block_14_add", [0.0, 0.5, 1.0])
    for name in sets:
        assert by_weight[0.0, name] == pytest.approx(by_layer[fd.FINAL, name])
        assert by_weight[1.0, name] == pytest.approx(by_layer["block_14_add", name])


def test_main_prints_one_row_per_layer_and_weight_and_rejects_bad_weights(
    fd: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "protocol.json").write_text(json.dumps({}))
    monkeypatch.setattr(fd, "extract", lambda source, data, sets, cache: fake_feats(fd, sets))
    args = ["imagenet", "--data", str(tmp_path), "--sets", "one,two", "--weights", "0,1"]
    assert fd.main([*args, "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "P@1" not in line]
    assert len(rows) == len(fd.LAYERS) + 2
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        fd.main([*args[:-1], "0,1.5"])
    assert "--weights takes numbers in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fd.main(["imagenet", "--data", str(tmp_path), "--sets", "one,missing"])
    assert "missing" in capsys.readouterr().err


def test_extract_caches_per_protocol_and_never_half_a_file(
    fd: ModuleType, fixture_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.eval.test_bench_domains import make_set

    data = make_set(fixture_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    calls: list[int] = []

    def fake_model(x: np.ndarray, training: bool = False) -> list[np.ndarray]:
        calls.append(len(x))
        # One (N, 2, 2, C) map per layer, from the pixels: features that differ between images.
        base = x.reshape(len(x), 2, x.shape[1] // 2, 2, x.shape[2] // 2, 3).mean(axis=(2, 4))
        return [base * (i + 1) for i in range(len(fd.LAYERS))]

    monkeypatch.setattr(fd, "_layer_model", lambda source: (fake_model, 32))
    feats = fd.extract("imagenet", data, ["fix"], cache)
    n_images = sum(calls)
    proto = json.loads((data / "fix" / "protocol.json").read_text(encoding="utf-8"))
    assert n_images == sum(len(v) for s in ("enroll", "query") for v in proto[s].values())
    assert feats["fix-ex-out_relu"].shape == (len(feats["fix-ey"]), 3)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert len(list(cache.glob("*-fix-*.npz"))) == 1

    again = fd.extract("imagenet", data, ["fix"], cache)
    assert sum(calls) == n_images  # from the cache
    np.testing.assert_array_equal(again["fix-qx-block_14_add"], feats["fix-qx-block_14_add"])

    # Another protocol in the same folder is another cache entry, not the old features.
    first = next(iter(proto["query"]))
    proto["query"][first] = proto["query"][first][:1]
    (data / "fix" / "protocol.json").write_text(json.dumps(proto), encoding="utf-8")
    fd.extract("imagenet", data, ["fix"], cache)
    assert sum(calls) > n_images
    assert len(list(cache.glob("*-fix-*.npz"))) == 2


def test_main_checks_sources_and_sets_before_any_work(
    fd: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "protocol.json").write_text("{}")
    with pytest.raises(SystemExit):
        fd.main([str(tmp_path / "no-run"), "--data", str(tmp_path), "--sets", "one"])
    assert "not a RUN_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fd.main(["imagenet", "--data", str(tmp_path), "--sets", ","])
    assert "--sets names at least one set" in capsys.readouterr().err
