"""bench/inner_fold.py: which classes the inner fold holds out, and the protocol folder it writes."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def fold() -> ModuleType:
    return load_script("bench/inner_fold.py", "bench_inner_fold")


def test_fold_b_is_odd_packages_and_every_sixth_produce_from_the_fourth(fold: ModuleType) -> None:
    packages = [f"P{i}" for i in range(5)]  # sorted: P0..P4 -> odd positions P1, P3
    produce = [f"a{i:02d}" for i in range(14)]  # sorted: indices 3 and 9 -> a03, a09
    sup = {c: "Packages" for c in packages} | {c: "Fruit" for c in produce}
    a, b = fold.split_fold(list(reversed(packages + produce)), sup)
    assert b == sorted(["P1", "P3", "a03", "a09"])
    assert a == sorted(set(packages + produce) - set(b))
    with pytest.raises(ValueError, match="no super class"):
        fold.split_fold(["x"], {})


def test_make_fold_writes_a_protocol_that_holds_fold_b_out(
    fold: ModuleType, tmp_path: Path
) -> None:
    data = tmp_path / "grocery"
    classes = ["Apple", "Banana", "Carrot", "Date", "Milk-A", "Milk-B", "Juice-A", "Juice-B"]
    for c in classes:  # 6 train/ photos each; val/ photos for Date only
        (data / "train" / c).mkdir(parents=True)
        for i in range(6):
            (data / "train" / c / f"{c}_{i}.jpg").write_bytes(b"")
    (data / "val" / "Date").mkdir(parents=True)
    (data / "val" / "Date" / "Date_v.jpg").write_bytes(b"")
    rows = ["fine_class\tcoarse_class\tsuper\ttrain\tval\ttest"] + [
        f"{c}\t{c}\t{'Packages' if '-' in c else 'Fruit'}\t1\t1\t1" for c in classes
    ]
    (data / "classes.tsv").write_text("\n".join(rows) + "\n")
    (data / "protocol.json").write_text(json.dumps({"train_classes": classes, "name": "g"}))
    assert fold.main(["--data", str(data), "--out", str(tmp_path / "f")]) == 0
    proto = json.loads((tmp_path / "f" / "protocol.json").read_text())
    assert proto["heldout_classes"] == ["Date", "Juice-B", "Milk-B"]
    assert not set(proto["train_classes"]) & set(proto["heldout_classes"])
    assert sorted(proto["train_classes"] + proto["heldout_classes"]) == sorted(classes)
    assert (tmp_path / "f" / "train").resolve() == (data / "train").resolve()
    assert proto["enroll"]["Milk-B"] == [f"train/Milk-B/Milk-B_{i}.jpg" for i in range(4)]
    assert proto["query"]["Milk-B"] == ["train/Milk-B/Milk-B_4.jpg", "train/Milk-B/Milk-B_5.jpg"]
    assert proto["query"]["Date"][-1] == "val/Date/Date_v.jpg"
    for c in proto["heldout_classes"]:  # every listed photo exists under the fold folder
        for f in proto["enroll"][c] + proto["query"][c]:
            assert (tmp_path / "f" / f).is_file()
    with pytest.raises(SystemExit):
        fold.main(["--data", str(data), "--out", str(data)])


@pytest.mark.parametrize(
    ("n_train", "n_val", "ok"),
    [(4, 0, False), (4, 1, True), (5, 0, True), (3, 2, False), (0, 6, False)],
)
def test_a_class_needs_four_shots_and_a_query(
    fold: ModuleType, tmp_path: Path, n_train: int, n_val: int, ok: bool
) -> None:
    for split, n in (("train", n_train), ("val", n_val)):
        (tmp_path / split / "A").mkdir(parents=True)
        for i in range(n):
            (tmp_path / split / "A" / f"{i}.jpg").write_bytes(b"")
    if ok:
        enroll, query = fold.enroll_and_query(tmp_path, ["A"])
        assert len(enroll["A"]) == 4 and len(query["A"]) == n_train + n_val - 4
    else:
        with pytest.raises(ValueError, match="needs at least 4 photos"):
            fold.enroll_and_query(tmp_path, ["A"])
