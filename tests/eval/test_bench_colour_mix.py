"""bench/colour_mix.py: the histogram against a naive numpy reference, and the script end to end on
a protocol made from the test fixture with the shipped bundle (no TensorFlow needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.eval.test_bench_domains import make_set
from tests.scripts import load_script


@pytest.fixture(scope="module")
def cm() -> ModuleType:
    return load_script("bench/colour_mix.py", "bench_colour_mix")


def test_histogram_matches_naive_bin_counts(cm: ModuleType) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image[0, 0] = (0, 63, 64)  # bin edges: 63 is in bin 0, 64 in bin 1 (4 bins of 64 levels)
    image[0, 1] = (255, 192, 191)
    got = cm.colour_histogram(image, bins=4, size=8)  # no resize: the pixels as they are
    counts = np.zeros(64)
    for b, g, r in image.reshape(-1, 3).astype(int):
        counts[(b // 64) * 16 + (g // 64) * 4 + r // 64] += 1
    np.testing.assert_allclose(got, np.sqrt(counts / counts.sum()), rtol=1e-6)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6)
    assert got[0 * 16 + 0 * 4 + 1] > 0  # (0, 63, 64): B bin 0, G bin 0, R bin 1
    assert got[3 * 16 + 3 * 4 + 2] > 0  # (255, 192, 191): B 3, G 3, R 2


def test_weight_zero_is_the_model_alone_and_one_the_colour_alone(cm: ModuleType) -> None:
    rng = np.random.default_rng(1)
    ey, qy = np.repeat(["a", "b", "c"], 2), np.array(["a", "b", "c", "c"])
    emb = (rng.normal(size=(6, 5)), rng.normal(size=(4, 5)))
    hist = (rng.uniform(size=(6, 8)), rng.uniform(size=(4, 8)))
    got = cm.evaluate(emb, hist, (ey, qy), [0.0, 1.0])
    e, q = cm.centre_on_gallery(*emb)
    assert got[0.0] == pytest.approx(cm.score(e, ey, q, qy))
    e, q = cm.centre_on_gallery(*hist)
    assert got[1.0] == pytest.approx(cm.score(e, ey, q, qy))


def test_end_to_end_with_the_training_check(
    cm: ModuleType,
    default_bundle_dir: Path,
    sets_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    grocery = tmp_path / "grocery"
    grocery.mkdir()
    (grocery / "train").symlink_to(fixture_dir / "train")
    (grocery / "val").symlink_to(fixture_dir / "test")
    classes = sorted(p.name for p in (fixture_dir / "train").iterdir())
    (grocery / "protocol.json").write_text(json.dumps({"train_classes": classes[:3]}))
    ef, ey, qf, qy = cm.training_split(grocery)
    assert sorted(set(ey)) == classes[:3] and len(ef) == sum(
        min(4, len(list((fixture_dir / "train" / c).iterdir()))) for c in classes[:3]
    )
    assert len(qf) == len(qy) and set(qy) == set(ey)

    argv = [str(default_bundle_dir), "--data", str(sets_dir), "--sets", "fix", "--weights", "0,0.5",
            "--cache", str(tmp_path / "cache"), "--training-check", str(grocery)]  # fmt: skip
    assert cm.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2 and all(len(r.split(" | ")) == 3 for r in rows)
    assert len(list((tmp_path / "cache").glob("colour-*-fix-*.npz"))) == 1
    with pytest.raises(SystemExit):
        cm.main([*argv[:6], "0,2"])


def test_summary_counts_and_spreads_against_hand_made_results(cm: ModuleType) -> None:
    results = {
        "m1": {n: {0.0: v0, 0.1: v1} for n, v0, v1 in zip(
            ["g", "z", "grocery training classes (val/)"],
            [(0.90, 0.80), (0.90, 0.90), (0.5, 0.5)],
            [(0.92, 0.81), (0.91, 0.90), (0.4, 0.6)], strict=True)},
        "m2": {n: {0.0: v0, 0.1: v1} for n, v0, v1 in zip(
            ["g", "z", "grocery training classes (val/)"],
            [(0.90, 0.80), (0.90, 0.90), (0.5, 0.5)],
            [(0.89, 0.85), (0.95, 0.91), (0.6, 0.4)], strict=True)},
        "m3": {n: {0.0: v0, 0.1: v1} for n, v0, v1 in zip(
            ["g", "z", "grocery training classes (val/)"],
            [(0.90, 0.80), (0.90, 0.90), (0.5, 0.5)],
            [(0.90, 0.79), (0.93, 0.95), (0.5, 0.5)], strict=True)},
    }  # fmt: skip
    lines = cm.summary(results, [0.0, 0.1])
    g = next(line for line in lines if line.startswith("| 0.1 | g |"))
    assert "-0.010 / +0.000 / +0.020" in g  # P@1 changes -0.01, +0.02, 0.00
    assert "-0.010 / +0.010 / +0.050" in g  # AUROC changes +0.01, +0.05, -0.01
    # The training check is summarised but not counted: m1 holds P@1 and AUROC on g and z,
    # m2 only AUROC, m3 only P@1.
    assert lines[-1].endswith(
        "P@1 equal or higher on every set (g, z) for 2, AUROC for 2, both for 1."
    )


def test_summary_leaves_the_inner_fold_out_of_the_count(cm: ModuleType) -> None:
    base = {"g": {0.0: (0.9, 0.8), 0.1: (0.91, 0.81)}}
    results = {"m": {**base, cm.FOLD_ROW: {0.0: (0.5, 0.5), 0.1: (0.1, 0.1)}}}
    assert cm.summary(results, [0.0, 0.1])[-1].endswith("(g) for 1, AUROC for 1, both for 1.")


def test_choose_weight_takes_the_best_sum_and_the_smaller_weight_on_a_tie(cm: ModuleType) -> None:
    assert cm.choose_weight({0.0: (0.9, 0.8), 0.05: (0.91, 0.8), 0.1: (0.8, 0.95)}) == 0.1
    assert cm.choose_weight({0.0: (0.9, 0.8), 0.05: (0.8, 0.9), 0.1: (0.85, 0.85)}) == 0.0
    assert cm.choose_weight({0.2: (0.5, 0.5), 0.1: (0.6, 0.4)}) == 0.1


def test_end_to_end_choosing_on_an_inner_fold(
    cm: ModuleType,
    default_bundle_dir: Path,
    sets_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    # The fold: the fixture's products the shipped model was not trained on, 1 enrollment shot
    # each (the set `fix` has 2 of every product), so its rows differ from the set's.
    from device.bundle import read_bundle_meta

    fold = make_set(fixture_dir, tmp_path / "folds") / "fix"
    proto = json.loads((fold / "protocol.json").read_text())
    new = [p for p in proto["enroll"] if p not in read_bundle_meta(default_bundle_dir).classes]
    assert len(new) >= 2
    proto["heldout_classes"] = new
    proto["enroll"] = {p: proto["enroll"][p][:1] for p in new}
    proto["query"] = {p: proto["query"][p] for p in new}
    (fold / "protocol.json").write_text(json.dumps(proto))
    argv = [str(default_bundle_dir), "--data", str(sets_dir), "--sets", "fix", "--weights",
            "0,0.5", "--cache", str(tmp_path / "cache"), "--choose-on", str(fold)]  # fmt: skip
    assert cm.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.rstrip(" |").split(" | ") for line in out.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    ey, qy = (np.array([p for p, fs in proto[k].items() for _ in fs]) for k in ("enroll", "query"))
    domains = load_script("bench/domains.py", "bench_domains_for_colour")
    e, q = domains.embed_set(default_bundle_dir, fold.parent, "fix", tmp_path / "cache")
    want = cm.evaluate(
        (e.emb, q.emb), cm._protocol_histograms(fold.parent, "fix", tmp_path / "cache"),
        (ey, qy), [0.0, 0.5],
    )  # fmt: skip
    for row, w in zip(rows, (0.0, 0.5), strict=True):
        assert row[2] == "{:.3f} / {:.3f}".format(*want[w])  # the fold's own figures
    chosen = out.split("The inner fold chooses w = ")[1].split(".\n")[0]
    assert chosen == f"{cm.choose_weight(want):g}"
    with pytest.raises(SystemExit):
        cm.main([*argv[:-1], str(tmp_path / "nowhere")])


def test_choose_on_refuses_a_bundle_trained_on_the_fold(
    cm: ModuleType,
    default_bundle_dir: Path,
    sets_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from device.bundle import read_bundle_meta

    trained = list(read_bundle_meta(default_bundle_dir).classes)
    assert trained  # the shipped bundle names its training classes
    fold = sets_dir / "fix"
    proto = json.loads((fold / "protocol.json").read_text())
    proto["heldout_classes"] = trained[:2]
    (fold / "protocol.json").write_text(json.dumps(proto))
    argv = [str(default_bundle_dir), "--data", str(sets_dir), "--sets", "fix",
            "--cache", str(tmp_path / "cache"), "--choose-on", str(fold)]  # fmt: skip
    with pytest.raises(SystemExit):
        cm.main(argv)
    assert "train a fold model" in capsys.readouterr().err
