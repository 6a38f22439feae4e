"""bench/domains.py end to end on a small protocol made from the test fixture: the table, the
embedding cache and the --plot figure (the shipped bundle; no TensorFlow needed)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

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
    assert len(list(cache.glob("*-fix.npz"))) == 1  # one model id, one set
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
