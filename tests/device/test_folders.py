"""One rule for folder-per-product trees: hidden folders and folders without images are not
products, wherever a tree is read (enrollment, synthetic scenes, convert's parity check)."""

from __future__ import annotations

import shutil
from pathlib import Path

from device.enroll import product_folders
from device.folders import product_dirs, product_images
from device.synthetic import load_photos

from .conftest import FIXTURE


def make_tree(root: Path) -> Path:
    src = sorted((FIXTURE / "test" / "Banana").glob("*.jpg"))[0]
    for name in ("Banana", "Milk", ".thumbnails"):
        (root / name).mkdir(parents=True)
        shutil.copy(src, root / name / "a.jpg")
    (root / "Empty").mkdir()
    (root / "Milk" / ".hidden.jpg").write_bytes(src.read_bytes())
    return root


def test_one_rule_for_product_folders(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    assert [p.name for p in product_dirs(root)] == ["Banana", "Empty", "Milk"]
    assert [(n, [p.name for p in ps]) for n, ps in product_images(root)] == [
        ("Banana", ["a.jpg"]),
        ("Milk", ["a.jpg"]),
    ]
    assert [n for n, _ in product_folders(root, None)] == ["Banana", "Milk"]
    assert [n for n, _ in load_photos(root)] == ["Banana", "Milk"]
    assert [n for n, _ in product_images(root, exclude={"Milk"})] == ["Banana"]


def test_convert_parity_reads_trees_by_the_same_rule(tmp_path: Path) -> None:
    from convert.parity import labelled_images

    root = make_tree(tmp_path / "tree")
    (root / "Banana" / "nested").mkdir()
    shutil.copy(root / "Banana" / "a.jpg", root / "Banana" / "nested" / "b.jpg")
    assert [(p.name, label) for p, label in labelled_images(root)] == [
        ("a.jpg", "Banana"),
        ("b.jpg", "Banana"),
        ("a.jpg", "Milk"),
    ]
