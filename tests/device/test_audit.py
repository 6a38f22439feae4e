"""`products check` (device.audit) against a brute-force reference, and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from device import cli
from device.audit import check_products, reject_all_threshold

from .conftest import FIXTURE
from .fakes import FakeEmbedder


def brute_force(emb: np.ndarray, labels: list[str]) -> dict[str, tuple]:
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = {}
    for p in dict.fromkeys(labels):
        mine = [i for i, lb in enumerate(labels) if lb == p]
        own = None
        if len(mine) > 1:
            own = min(max(float(x[i] @ x[j]) for j in mine if j != i) for i in mine)
        best: dict[str, float] = {}
        for i in mine:
            for j, lb in enumerate(labels):
                if lb != p:
                    best[lb] = max(best.get(lb, -2.0), float(x[i] @ x[j]))
        near = max(best.items(), key=lambda kv: kv[1]) if best else (None, None)
        out[p] = (len(mine), own, *near)
    return out


def test_check_equals_brute_force_on_interleaved_views() -> None:
    rng = np.random.default_rng(0)
    labels = [f"p{int(i)}" for i in rng.integers(0, 12, size=60)] + ["single"]
    emb = rng.normal(size=(61, 8)).astype(np.float32) * rng.uniform(0.5, 3, size=(61, 1))
    checks = check_products(emb, labels)
    ref = brute_force(emb, labels)
    assert [c.name for c in checks] == list(dict.fromkeys(labels))
    for c in checks:
        views, own, nearest, score = ref[c.name]
        assert c.views == views and c.nearest == nearest
        assert c.nearest_score == pytest.approx(score, abs=1e-5)
        assert (c.own_score is None) == (own is None)
        if own is not None:
            assert c.own_score == pytest.approx(own, abs=1e-5)
    assert reject_all_threshold(checks) == pytest.approx(max(r[3] for r in ref.values()), abs=1e-5)


def test_flags_weak_and_look_alike_products() -> None:
    e = np.array([[1, 0, 0], [1, 0.05, 0], [0.6, 0.8, 0], [0.05, 1, 0], [0, 0, 1]], np.float32)
    checks = {c.name: c for c in check_products(e, ["a", "a", "b", "b", "c"])}
    assert checks["a"].flags(0.9) == []  # its views agree, nothing else is close
    assert any("weak" in f for f in checks["b"].flags(0.9))  # its two views disagree (cos 0.64)
    assert any("look-alike of 'b'" in f for f in checks["a"].flags(0.5))
    assert checks["c"].own_score is None
    assert [f.split(":")[0] for f in checks["c"].flags(0.5)] == ["one view only"]
    only = check_products(e[:2], ["a", "a"])
    assert only[0].nearest is None and reject_all_threshold(only) is None
    with pytest.raises(ValueError):
        check_products(e, ["a"])


def test_products_check_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: FakeEmbedder(threshold=0.8))
    db = ["--db", str(tmp_path / "g.db")]
    tree = tmp_path / "photos"
    for product in ("Banana", "Oatly-Oat-Milk", "Red-Bell-Pepper"):
        (tree / product).mkdir(parents=True)
        for src in sorted((FIXTURE / "train" / product).glob("*.jpg"))[:3]:
            (tree / product / src.name).write_bytes(src.read_bytes())
    assert cli.main(["products", "check", *db]) == 4  # a mistyped --db is not an empty set
    assert "no product database at" in capsys.readouterr().err
    assert not (tmp_path / "g.db").exists()
    (tmp_path / "g.db").touch()  # an empty database (SQLite takes an empty file)
    assert cli.main(["products", "check", *db]) == 0
    assert "no products stored" in capsys.readouterr().err
    assert cli.main(["enroll", *db, "--from-images", str(tree)]) == 0
    capsys.readouterr()
    assert cli.main(["products", "check", *db, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["name"], r["views"]) for r in rows] == [
        ("Banana", 3), ("Oatly-Oat-Milk", 3), ("Red-Bell-Pepper", 3)
    ]  # fmt: skip
    assert all(r["nearest"] in {"Banana", "Oatly-Oat-Milk", "Red-Bell-Pepper"} for r in rows)
    assert cli.main(["products", "check", *db, "--threshold", "-1"]) == 0
    captured = capsys.readouterr()
    assert "look-alike" in captured.out  # every pair scores above -1
    assert "threshold -1.000 (from --threshold)" in captured.err


def test_a_product_with_one_view_is_flagged() -> None:
    emb = np.eye(4, dtype=np.float32)[[0, 1, 1, 2]]
    one, two, _ = check_products(emb, ["one", "two", "two", "other"])
    assert any("one view only" in f for f in one.flags(0.5))
    assert not any("one view only" in f for f in two.flags(0.5))
