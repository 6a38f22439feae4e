"""Input that used to be silently misread: a stray photo among product folders, a photo too small
to embed, empty option values, control characters in product names, an empty database left
behind."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import cli
from device.bundle import InputSpec
from device.enroll import enroll_from_images, guided_enroll, product_folders
from device.enroll_session import EnrollSession
from device.gallery import Gallery, new_product_name
from device.preprocess import resize_rgb
from device.transfer import export_gallery, read_gallery_export

from .conftest import make_config
from .fakes import FakeEmbedder
from .test_enroll import _tree as tree_of


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> FakeEmbedder:
    fake = FakeEmbedder()
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: fake)
    return fake


# --- a stray photo among product folders ---------------------------------------------------------


def test_a_photo_beside_product_folders_is_refused_naming_it(tmp_path: Path) -> None:
    tree = tree_of(tmp_path / "photos", ("Banana", "Oatly-Oat-Milk"))
    shutil.copy(next(iter(sorted((tree / "Banana").glob("*.jpg")))), tree / "stray.jpg")
    with pytest.raises(ValueError, match=r"both photos \(stray\.jpg\) and product folders "):
        product_folders(tree, None)
    db = tmp_path / "g.db"
    fake = FakeEmbedder()
    code = cli.main(["enroll", "--from-images", str(tree), "--db", str(db), "--model", "m"])
    assert code == cli.EXIT_CONFIG and not db.exists()
    (tree / "stray.jpg").unlink()  # without it: one product per folder, as before
    assert [n for n, _ in product_folders(tree, None)] == ["Banana", "Oatly-Oat-Milk"]
    assert fake.calls == 0


# --- a photo too small to embed ------------------------------------------------------------------


class CheckingEmbedder(FakeEmbedder):
    """The stand-in, refusing what the real embedder's preprocessing refuses."""

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        resize_rgb(crop_bgr, InputSpec(height=8, width=8))  # ValueError: "too small to embed"
        return super().embed(crop_bgr)


def test_a_photo_too_small_to_embed_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = tree_of(tmp_path / "photos", ("Arla-Standard-Milk", "Banana", "Oatly-Oat-Milk"))
    cv2.imwrite(str(tree / "Arla-Standard-Milk" / "a_tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cfg = make_config(tmp_path)
    with caplog.at_level(logging.WARNING), Gallery(cfg.gallery.path) as g:
        results = enroll_from_images(
            tree, embedder=CheckingEmbedder(), gallery=g, config=cfg, say=lambda s: None
        )
        # Every product after it is stored too.
        assert [(p.name, p.n_views) for p in g.products()] == [
            ("Arla-Standard-Milk", 2),
            ("Banana", 2),
            ("Oatly-Oat-Milk", 2),
        ]
    assert any("a_tiny.png" in s and "too small" in s for s in results[0].skipped)
    assert any("a_tiny.png" in r.getMessage() for r in caplog.records)


# --- empty option values -------------------------------------------------------------------------

EMPTY = [
    ["run", "--db", ""],
    ["run", "--model", ""],
    ["run", "--source", " "],
    ["run", "--save-crops", ""],
    ["run", "--config", ""],
    ["products", "list", "--db", ""],
    ["enroll", "--from-images", "", "--db", "x.db"],
    ["gallery", "import", ""],
]


@pytest.mark.parametrize("argv", EMPTY, ids=[" ".join(a) for a in EMPTY])
def test_an_empty_option_value_is_refused(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, fake_model
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "empty value" in capsys.readouterr().err
    assert fake_model.calls == 0 and list(tmp_path.iterdir()) == []


# --- control characters in product names ---------------------------------------------------------


@pytest.mark.parametrize("name", ["Milk\nBad", "Tab\there", "Esc\x1b[31m", "Sep\u2028x", "\x7f"])
def test_one_rule_refuses_control_characters_showing_the_name_as_given(name: str) -> None:
    with pytest.raises(ValueError, match="holds a control character") as info:
        new_product_name(name)
    assert repr(name) in str(info.value)


def test_names_with_control_characters_are_refused_everywhere(
    tmp_path: Path, photos: list[tuple[str, np.ndarray]]
) -> None:
    fake = FakeEmbedder()
    cfg = make_config(tmp_path)
    assert new_product_name("  Mjo\u0308lk ") == "Mjölk"  # still trimmed and NFC
    with pytest.raises(ValueError, match="is blank"):
        new_product_name("   ")
    # A photo folder: refused before any photo is embedded.
    tree = tmp_path / "photos"
    tree_of(tree, ("Banana",))
    (tree / "Banana").rename(tree / "Ban\nana")
    tree_of(tree, ("Oatly-Oat-Milk",))
    with Gallery(cfg.gallery.path) as g:
        with pytest.raises(ValueError, match=r"sub-folder 'Ban\\nana' .*control character"):
            enroll_from_images(tree, embedder=fake, gallery=g, config=cfg, say=lambda s: None)
        assert fake.calls == 0 and len(g) == 0
        with pytest.raises(ValueError, match="control character"):
            guided_enroll(
                "A\tB", source=None, embedder=fake, gallery=g, config=cfg, ask=lambda p: ""
            )  # type: ignore[arg-type]
        # A camera session (console, web page, StartEnroll): refused before any view is taken.
        with pytest.raises(ValueError, match="control character"):
            EnrollSession("Milk\nBad", 4, cfg.enroll.duplicate_cosine)
        with pytest.raises(ValueError, match="control character"):
            g.add_product("X\r", [(fake.embed(photos[0][1]), photos[0][1])], fake.model_id)
        g.add_product("Good", [(fake.embed(photos[0][1]), photos[0][1])], fake.model_id)
        with pytest.raises(ValueError, match=r"'a\\nb' holds a control character"):
            g.rename("Good", "a\nb")
        # A name stored before the rule can still be found and renamed to a valid one.
        g.conn.execute("UPDATE products SET name = 'Old\nname' WHERE name = 'Good'")
        assert g.rename("Old\nname", "Fixed") == "Fixed"
        export_gallery(g, tmp_path / "set.zip")
    # An export naming a product so is refused whole.
    with (
        zipfile.ZipFile(tmp_path / "set.zip") as zin,
        zipfile.ZipFile(tmp_path / "bad.zip", "w") as zout,
    ):
        for member in zin.namelist():
            data = zin.read(member)
            if member == "gallery.json":
                manifest = json.loads(data)
                manifest["products"][0]["name"] = "Fi\nxed"
                data = json.dumps(manifest).encode()
            zout.writestr(member, data)
    with pytest.raises(ValueError, match=r"not a valid gallery export: product 1: .*'Fi\\nxed'"):
        read_gallery_export(tmp_path / "bad.zip")


# --- no empty database left behind ---------------------------------------------------------------


def test_no_empty_database_is_left_when_nothing_was_stored(tmp_path: Path, fake_model) -> None:
    photos = tmp_path / "photos" / "Broken"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"not a jpeg")
    db = tmp_path / "new.db"
    code = cli.main(["enroll", "--from-images", str(photos), "--db", str(db), "--model", "m"])
    assert code == cli.EXIT_CONFIG  # "none of its 1 photos could be used"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    # An existing database is never removed, even an empty one.
    Gallery(db).close()
    assert cli.main(["enroll", "--from-images", str(photos), "--db", str(db), "--model", "m"]) != 0
    assert db.is_file()
    # An import that adds nothing to a new database leaves none either.
    with Gallery(tmp_path / "empty-src.db") as g:
        export_gallery(g, tmp_path / "none.zip")
    target = tmp_path / "target.db"
    code = cli.main(["gallery", "import", str(tmp_path / "none.zip"), "--db", str(target)])
    assert code == 0 and not target.exists()
    # A new database that received a product stays.
    good = tree_of(tmp_path / "good", ("Banana",))
    assert cli.main(["enroll", "--from-images", str(good), "--db", str(target)]) == 0
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT COUNT(*) FROM products").fetchone()[0] == 1
