"""bench/domains.py end to end on a small protocol made from the test fixture: the table, the
embedding cache and the --plot figure (the shipped bundle; no TensorFlow needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.scripts import load_script


def load_domains() -> ModuleType:
    return load_script("bench/domains.py", "bench_domains")


def make_set(fixture_dir: Path, root: Path) -> Path:
    """root/fix/protocol.json: 2 enrollment shots per product from train/, queries from test/."""
    folder = root / "fix"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / split).symlink_to(fixture_dir / split)
    products = sorted(p.name for p in (fixture_dir / "train").iterdir())
    proto = {
        "name": "fixture",
        "train_classes": [],
        "heldout_classes": products,
        "enroll": {
            p: [f"train/{p}/{f.name}" for f in sorted((fixture_dir / "train" / p).iterdir())[:2]]
            for p in products
        },
        "query": {
            p: [f"test/{p}/{f.name}" for f in sorted((fixture_dir / "test" / p).iterdir())]
            for p in products
        },
    }
    (folder / "protocol.json").write_text(json.dumps(proto), encoding="utf-8")
    return root


def test_table_cache_and_plot(
    default_bundle_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    domains = load_domains()
    data = make_set(fixture_dir, tmp_path / "data")
    cache, plot = tmp_path / "cache", tmp_path / "trade.png"
    argv = [str(default_bundle_dir), "--reference", str(default_bundle_dir), "--data", str(data),
            "--sets", "fix", "--cache", str(cache), "--plot", str(plot), "--plot-sets", "fix,fix"]  # fmt: skip
    assert domains.main(argv) == 0
    first = capsys.readouterr().out
    rows = [line for line in first.splitlines() if line.startswith("| ") and "| fix |" in line]
    assert len(rows) == 4  # reference and bundle, each printed as measured and in the table
    cells = rows[0].split(" | ")
    p1, auroc = float(cells[2]), float(cells[4])
    assert 0.0 <= p1 <= 1.0 and 0.0 <= auroc <= 1.0
    assert "reference" in rows[0] and "reference" not in rows[1]
    assert len(list(cache.glob("*-fix-????????.npz"))) == 1  # one model id, one set
    assert plot.is_file() and plot.stat().st_size > 10_000

    # From the cache, the same figures, without embedding anything again.
    def no_embedder(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr(domains, "Embedder", no_embedder)
    assert domains.main(argv) == 0
    again = [line for line in capsys.readouterr().out.splitlines() if "| fix |" in line]
    assert [r.split(" | ")[2:] for r in again] == [r.split(" | ")[2:] for r in rows]


def test_plot_sets_and_labels_are_checked() -> None:
    domains = load_domains()
    with pytest.raises(SystemExit):
        domains.main(["b", "--sets", "grocery", "--plot", "x.png", "--plot-sets", "grocery,coil"])
    labels = domains.short_labels(
        [(Path("runs/a/bundle"), True), (Path("runs/a/bundle"), False), (Path("models/a"), False)]
    )
    assert list(labels.values()) == ["a (reference)", "a", "a #2"]


def test_exposure_reaches_every_image_and_is_cached_apart(
    default_bundle_dir: Path,
    fixture_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    domains = load_domains()
    data = make_set(fixture_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    seen: list[tuple[int, ...]] = []
    real = domains.exposure_gain

    def spy(image: Any) -> Any:
        seen.append(image.shape)
        return real(image)

    monkeypatch.setattr(domains, "exposure_gain", spy)
    argv = [str(default_bundle_dir), "--data", str(data), "--sets", "fix", "--cache", str(cache),
            "--false-accepts", "5", "--siblings"]  # fmt: skip
    assert domains.main(argv) == 0
    assert seen == []  # off unless asked
    assert domains.main([*argv, "--exposure-gain"]) == 0
    proto = json.loads((data / "fix" / "protocol.json").read_text(encoding="utf-8"))
    n_images = sum(len(v) for split in ("enroll", "query") for v in proto[split].values())
    assert len(seen) == n_images
    assert len(list(cache.glob("*-fix-????????.npz"))) == 1
    assert (
        len(list(cache.glob("*-fix-????????-exposure-*.npz"))) == 1
    )  # not mixed with plain embeddings
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "| fix |" in line).split(" | ")
    fa_percent = float(row[7].rstrip("%"))
    note = next(line for line in out.splitlines() if re.search(r"false accepts? \(", line))
    total = int(re.search(r"(\d+) false accepts? \(", note).group(1))
    n_queries = sum(len(v) for v in proto["query"].values())
    assert abs(100 * total / n_queries - fa_percent) < 0.051  # the table rounds to 0.1 %
    sibling = next(line for line in out.splitlines() if "same-brand product enrolled" in line)
    counts = [int(n) for n in re.findall(r"against the (\d+) unknowns", sibling)]
    assert sum(counts) == n_queries  # every unknown in one of the two groups
    assert f"AUROC {row[4]};" in sibling
    with pytest.raises(SystemExit):
        domains.main([*argv, "--false-accepts", "-1"])


def test_exposure_gain_matches_a_naive_reference() -> None:
    import cv2
    import numpy as np

    domains = load_domains()
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (20, 30, 3), dtype=np.uint8)
    out = domains.exposure_gain(dark)
    luma = cv2.cvtColor(dark, cv2.COLOR_BGR2GRAY).astype(np.float64)  # OpenCV's own weights
    gain = min(4.0, 170.0 / np.percentile(luma, 99))
    assert gain > 1
    expected = np.clip(dark.astype(np.float64) * gain, 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2  # cv2 rounds its grey
    very_dark = np.full((8, 8, 3), 10, np.uint8)
    assert (domains.exposure_gain(very_dark) == 40).all()  # capped at 4x
    just_below = np.full((8, 8, 3), 160, np.uint8)
    assert (domains.exposure_gain(just_below) == 170).all()  # 160 * 170/160
    at_level = np.full((8, 8, 3), 170, np.uint8)
    assert domains.exposure_gain(at_level) is at_level  # well exposed: left alone
    bright = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert domains.exposure_gain(bright) is bright


def test_false_accept_pairs_on_hand_made_embeddings() -> None:
    import numpy as np

    from device.adaptation import Centring
    from device.matching import MatchingPolicy

    domains = load_domains()
    policy = MatchingPolicy(Centring.none(), None, 0.01, None, fixed_threshold=0.5)
    a, b, c = np.eye(3, dtype=np.float32)
    enroll = domains.Split(np.array(["a", "b", "c"]), np.stack([a, b, c]))
    # Two "a" queries lean towards b: with a left out they match b above 0.5; the third does not.
    # The "c" query is far from a and b: with c left out it is rejected.
    queries = np.stack([a + 0.9 * b, a + 1.5 * b, a + 0.1 * c, c + 0.1 * a])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    query = domains.Split(np.array(["a", "a", "a", "c"]), queries)
    r = domains.evaluate_all(policy, enroll, query)
    # Naive: each query's best cosine to the other products' views, against 0.5.
    expected = {}
    for q, label in zip(queries, query.labels, strict=True):
        others = [(float(q @ v), name) for v, name in zip((a, b, c), "abc", strict=True)]
        score, name = max(o for o in others if o[1] != label)
        if score >= 0.5:
            expected[(str(label), name)] = expected.get((str(label), name), 0) + 1
    assert dict(r["false_accept_pairs"]) == expected == {("a", "b"): 2}
    assert r["false_accept"] == 0.5
    note = domains._false_accept_note("m", "s", r, 4, 3)
    assert "2 false accepts (50.0% of 4 queries" in note and "a -> b x2" in note


def test_sibling_aurocs_match_naive_pair_counts() -> None:
    import numpy as np

    domains = load_domains()
    assert domains.brand("Arla-Sour-Cream") == "Arla" and domains.brand("obj29") == "obj29"
    products = ["Arla-Milk", "Arla-Cream", "Oatly-Oat-Milk", "obj7"]
    truth = ["Arla-Milk", "Arla-Cream", "Oatly-Oat-Milk", "obj7", "Arla-Milk"]
    known = np.array([0.9, 0.5, 0.7, 0.6, 0.4])
    unknown = np.array([0.8, 0.55, 0.2, 0.6, 0.1])

    def naive(neg: list[float]) -> float:
        pairs = [1.0 if k > u else 0.5 if k == u else 0.0 for k in known for u in neg]
        return sum(pairs) / len(pairs)

    got = domains.sibling_aurocs(known, unknown, truth, products)
    assert got["sibling"] == (pytest.approx(naive([0.8, 0.55, 0.1])), 3)
    assert got["no sibling"] == (pytest.approx(naive([0.2, 0.6])), 2)  # a tie counts 1/2
    none = domains.sibling_aurocs(known[:1], unknown[:1], ["obj1"], ["obj1", "obj2"])
    assert none["sibling"] == (None, 0) and none["no sibling"][1] == 1
    r = {
        "auroc": 0.5,
        "auroc_by_sibling": none,
        "false_accept_by_sibling": {"sibling": None, "no sibling": 0.25},
        "no_sibling_hindsight": (0.75, 0.6),
    }
    note = domains._sibling_note("m", "s", r)
    assert "- against the 0 unknowns with a same-brand product enrolled," in note
    assert "against the 1 unknowns without a same-brand product enrolled (25.0% false" in note
    assert "alone: 0.750 accepted-and-right at <= 2% false accepts (threshold 0.600)" in note


def test_sibling_split_of_false_accepts_and_hindsight_on_hand_made_embeddings() -> None:
    import numpy as np

    from device.adaptation import Centring
    from device.matching import MatchingPolicy

    domains = load_domains()
    policy = MatchingPolicy(Centring.none(), None, 0.01, None, fixed_threshold=0.5)
    a1, a2, b1 = np.eye(3, dtype=np.float32)
    names = np.array(["A-1", "A-2", "B-1"])
    enroll = domains.Split(names, np.stack([a1, a2, b1]))
    # A-1's queries lean towards their sibling A-2; B-1's are alone in their brand.
    raw = [a1 + 0.8 * a2, a1 + 0.2 * a2, a2 + 0.1 * b1, b1 + 0.3 * a1, b1 + 0.9 * a2]
    queries = np.stack([q / np.linalg.norm(q) for q in raw]).astype(np.float32)
    labels = np.array(["A-1", "A-1", "A-2", "B-1", "B-1"])
    r = domains.evaluate_all(policy, enroll, domains.Split(labels, queries))
    # Naive: each query's best cosine to the other products' views, and its best cosine overall.
    views = {"A-1": a1, "A-2": a2, "B-1": b1}
    unknown = np.array(
        [
            max(float(q @ v) for n, v in views.items() if n != lab)
            for q, lab in zip(queries, labels, strict=True)
        ]
    )
    known = np.array([max(float(q @ v) for v in views.values()) for q in queries])
    right = np.array(
        [
            max(views, key=lambda n: float(q @ views[n])) == lab
            for q, lab in zip(queries, labels, strict=True)
        ]
    )
    sib = np.array([True, True, True, False, False])
    assert r["false_accept_by_sibling"]["sibling"] == pytest.approx(np.mean(unknown[sib] >= 0.5))
    assert r["false_accept_by_sibling"]["no sibling"] == pytest.approx(
        np.mean(unknown[~sib] >= 0.5)
    )
    # 2 unknowns without a sibling: 2% allows none, so the threshold is just above the higher.
    ar, t = r["no_sibling_hindsight"]
    assert t == pytest.approx(unknown[~sib].max(), abs=1e-6) and t > unknown[~sib].max()
    assert ar == pytest.approx(np.mean(right & (known >= t)))


def test_labels_of_coincident_points_are_moved_apart() -> None:
    domains = load_domains()
    assert domains._label_offsets([]) == []
    # Two points on top of each other and a third far away: only the second label moves.
    assert domains._label_offsets([(0.9, 0.95), (0.9, 0.95), (0.5, 0.90)]) == [0.0, -10.0, 0.0]
    # Three together: each one line further down.
    assert domains._label_offsets([(0.9, 0.95)] * 3 + [(0.5, 0.9)]) == [0.0, -10.0, -20.0, 0.0]


def test_a_remade_set_of_the_same_name_is_embedded_again(
    default_bundle_dir: Path, sets_dir: Path, tmp_path: Path
) -> None:
    domains = load_domains()
    cache = tmp_path / "cache"
    _, query = domains.embed_set(default_bundle_dir, sets_dir, "fix", cache)
    path = sets_dir / "fix" / "protocol.json"
    proto = json.loads(path.read_text(encoding="utf-8"))
    first = next(iter(proto["query"]))
    proto["query"][first] = proto["query"][first][:1]  # one query fewer or more
    path.write_text(json.dumps(proto), encoding="utf-8")
    _, again = domains.embed_set(default_bundle_dir, sets_dir, "fix", cache)
    assert len(list(cache.glob("*-fix-*.npz"))) == 2
    expected = sum(len(v) for v in proto["query"].values())
    assert len(again.labels) == expected != len(query.labels)
