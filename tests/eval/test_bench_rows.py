"""bench/grocery_protocol.py writes its rows into the table, never below later sections."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script


def _bench():
    return load_script("bench/grocery_protocol.py", "bench_gp")


ROW = {
    "date": "2026-01-01 00:00",
    "head": "arcface",
    "backbone": "MobileNetV2 1.0 ImageNet",
    "input_size": 160,
    "epochs": 12,
    "model": "tflite int8",
    "p_at_1": 0.5,
    "map_at_r": 0.4,
    "auroc": 0.6,
    "threshold": 0.7,
    "accepted_right": 0.1,
    "false_accept": 0.01,
    "wall_minutes": 3.0,
    "commit": "abc1234",
    "command": "python bench/grocery_protocol.py --head a|b",
}


def test_rows_are_appended_to_the_table_not_the_file(tmp_path: Path) -> None:
    bench = _bench()
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(
        "# Benchmarks\n\n" + bench.TABLE_HEADER + "| old row |\n\n## Later section\n\nx\n"
    )
    bench.append_row(ROW, md)
    bench.append_row({**ROW, "head": "softmax"}, md)
    lines = md.read_text().splitlines()
    later = lines.index("## Later section")
    rows = [i for i, line in enumerate(lines) if line.startswith("| 2026-01-01")]
    assert len(rows) == 2 and max(rows) < later
    assert "| arcface |" in lines[rows[0]] and "| softmax |" in lines[rows[1]]
    assert "--head a\\|b" in lines[rows[0]]  # a pipe in a cell cannot break the table


def test_a_file_without_the_table_gets_one(tmp_path: Path) -> None:
    bench = _bench()
    md = tmp_path / "BENCHMARKS.md"
    bench.append_row(ROW, md)
    text = md.read_text()
    assert text.startswith("# Benchmarks") and bench.TABLE_HEADER in text
    assert text.rstrip().endswith("`python bench/grocery_protocol.py --head a\\|b` |")


def test_calibration_classes_are_linked_apart_from_the_training_classes(tmp_path: Path) -> None:
    gp = _bench()
    data = tmp_path / "grocery"
    for sub, cls, n in [("train", "A", 3), ("val", "A", 1), ("train", "B", 2), ("train", "C", 2)]:
        (data / sub / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (data / sub / cls / f"{i}.jpg").write_bytes(b"x")
    out = tmp_path / "out"
    calib = gp.link_calibration_classes(data, out, ["A"])
    train = gp.link_training_classes(data, out, ["B", "C"])
    assert sorted(p.name for p in (calib / "val" / "A").iterdir()) == [
        "train-0.jpg", "train-1.jpg", "train-2.jpg", "val-0.jpg"
    ]  # fmt: skip
    assert sorted(p.name for p in (train / "train").iterdir()) == ["B", "C"]
    assert not (train / "val" / "A").exists()
