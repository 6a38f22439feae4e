"""Pure parts of convert: image selection, P@1 against brute force, source resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convert.calibration import balanced_selection, image_tree, split_holdout
from convert.parity import cosine_summary, labelled_images, precision_at_1, row_cosines
from convert.source import float_spec, resolve_source


def _touch_images(root: Path, counts: dict[str, int]) -> None:
    for folder, n in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"img_{i:02d}.jpg").write_bytes(b"x")


def test_balanced_selection_is_round_robin_and_deterministic(tmp_path: Path) -> None:
    _touch_images(tmp_path, {"b/x": 5, "a": 1, "c": 3, ".hidden": 4})
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    picked = balanced_selection(tmp_path, 7)
    names = [p.relative_to(tmp_path).as_posix() for p in picked]
    assert names == [
        "a/img_00.jpg", "b/x/img_00.jpg", "c/img_00.jpg",
        "b/x/img_01.jpg", "c/img_01.jpg",
        "b/x/img_02.jpg", "c/img_02.jpg",
    ]  # fmt: skip
    assert balanced_selection(tmp_path, 7) == picked
    assert len(balanced_selection(tmp_path, 100)) == 9  # everything, hidden folders excluded
    assert list(image_tree(tmp_path)) == ["a", "b/x", "c"]


def test_split_holdout() -> None:
    paths = [Path(f"{i}.jpg") for i in range(12)]
    calibration, held_out = split_holdout(paths)
    assert held_out == [Path("4.jpg"), Path("9.jpg")]
    assert sorted(calibration + held_out) == sorted(paths)


def test_selection_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        balanced_selection(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no images"):
        balanced_selection(tmp_path)


def _brute_force_p_at_1(gallery, g_labels, queries, q_labels) -> float:
    hits, n = 0, 0
    for q, label in zip(queries, q_labels, strict=True):
        if label not in g_labels:
            continue
        best: dict[str, float] = {}
        for g, gl in zip(gallery, g_labels, strict=True):
            cos = float(np.dot(q, g) / np.linalg.norm(q) / np.linalg.norm(g))
            best[gl] = max(best.get(gl, -2.0), cos)
        hits += max(best, key=lambda k: best[k]) == label
        n += 1
    return hits / n


def test_precision_at_1_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    g_labels = [f"p{i % 5}" for i in range(20)]
    gallery = centres[[i % 5 for i in range(20)]] + rng.normal(scale=0.8, size=(20, 8))
    q_idx = rng.integers(0, 6, size=40)  # product 5 is not enrolled
    q_labels = [f"p{i}" for i in q_idx]
    queries = np.vstack([centres, rng.normal(size=(1, 8))])[q_idx] + rng.normal(
        scale=0.8, size=(40, 8)
    )
    result = precision_at_1(gallery, g_labels, queries, q_labels)
    expected = _brute_force_p_at_1(gallery, g_labels, queries, q_labels)
    assert 0.0 < expected < 1.0  # a case where mistakes happen
    assert result["p_at_1"] == pytest.approx(expected, abs=1e-6)
    assert result["n_queries"] == sum(label != "p5" for label in q_labels)
    assert result["skipped_queries"] == q_labels.count("p5")
    assert result["n_products"] == 5


def test_cosines() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 1.0], [0.0, -1.0]])
    np.testing.assert_allclose(row_cosines(a, b), [np.sqrt(0.5), -1.0], atol=1e-6)
    summary = cosine_summary(row_cosines(a, b))
    assert summary["n"] == 2 and summary["min_cosine"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least one image"):
        cosine_summary(np.zeros(0))


def test_labelled_images(fixture_dir: Path) -> None:
    pairs = labelled_images(fixture_dir / "test")
    assert len(pairs) == 32 and len({label for _, label in pairs}) == 8
    assert all(path.parent.name == label for path, label in pairs)


def _run_dir(tmp_path: Path, config: dict | None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "extractor.keras").write_bytes(b"")
    if config is not None:
        # As `training fit` writes it: convert reads it with training/run.py's format check.
        config = {"format": "prodrec-run", "format_version": 1, **config}
        (run / "config.json").write_text(json.dumps(config))
    return run


def test_source_refuses_a_config_that_is_not_a_run(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, {"model": {"input_size": 160}})
    config = json.loads((run / "config.json").read_text())
    del config["format"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is not a prodrec-run config"):
        resolve_source(run)


def test_source_reads_everything_from_config(tmp_path: Path) -> None:
    run = _run_dir(
        tmp_path,
        {
            "model": {
                "backbone": "mobilenet_v2",
                "alpha": 1.0,
                "input_size": 160,
                "head": "arcface",
            },
            "preprocessing": {"input_size": [160, 160], "color_order": "BGR", "resize": "linear"},
            "classes": ["a", "b"],
            "threshold": {"value": 0.41, "method": "leave-class-out", "target_far": 0.01},
        },
    )
    for src in (run, run / "extractor.keras"):
        source = resolve_source(src)
        assert source.name == "arcface-mnv2-a1.0-160"
        assert (source.input_size, source.color_order, source.resize) == (
            (160, 160),
            "BGR",
            "linear",
        )
        assert source.classes == ("a", "b") and source.threshold == 0.41
        assert source.threshold_info == {"method": "leave-class-out", "target_far": 0.01}
    spec = float_spec(source, (None, 160, 160, 3))
    assert (spec.height, spec.width, spec.dtype, spec.color_order) == (160, 160, "float32", "BGR")
    with pytest.raises(ValueError, match="inconsistent"):
        float_spec(source, (None, 96, 96, 3))
    with pytest.raises(ValueError, match="disagrees"):
        resolve_source(run, color_order="RGB")


def test_source_without_config(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, None)
    with pytest.raises(ValueError, match="--color-order"):
        resolve_source(run)
    source = resolve_source(run, color_order="RGB")
    assert source.threshold is None and source.classes == () and source.run_dir is None
    assert float_spec(source, (None, 64, 64, 3)).height == 64  # size from the model itself
    with pytest.raises(ValueError, match="--input-size"):
        float_spec(source, (None, None, None, 3))


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        resolve_source(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"holds no extractor\.keras"):
        resolve_source(tmp_path)
