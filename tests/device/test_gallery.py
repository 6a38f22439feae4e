"""The SQLite product database: atomic products, WAL, schema, corruption, re-embedding, export."""

from __future__ import annotations

import os
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from device.errors import GalleryError
from device.gallery import SCHEMA_VERSION, Gallery, export_gallery, import_gallery

from .fakes import FakeEmbedder


def add(g: Gallery, name: str, crops, emb: FakeEmbedder, **kw) -> int:
    return g.add_product(name, [(emb.embed(c), c) for c in crops], emb.model_id, **kw)


def test_products_views_and_schema(tmp_path: Path, photos) -> None:
    fake = FakeEmbedder()
    db = tmp_path / "sub" / "g.db"
    with Gallery(db) as g:
        assert g.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert g.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        add(g, "Banana", [photos[2][1], photos[3][1]], fake, code="4011")
        add(g, "Milk", [photos[1][1]], fake)
        assert [(p.name, p.n_views, p.code) for p in g.products()] == [
            ("Banana", 2, "4011"),
            ("Milk", 1, None),
        ]
        with pytest.raises(ValueError, match="already exists"):
            add(g, "Milk", [photos[0][1]], fake)
        add(g, "Milk", [photos[0][1]], fake, append=True)
        emb, labels = g.load(fake.model_id)
        assert emb.shape == (4, fake.dim) and labels == ["Banana", "Banana", "Milk", "Milk"]
        np.testing.assert_allclose(emb[0], fake.embed(photos[2][1]), atol=1e-6)
        g.rename("Milk", "Arla milk")
        with pytest.raises(ValueError, match="no product"):
            g.delete("Milk")
        g.delete("Banana")
        assert [p.name for p in g.products()] == ["Arla milk"]
        assert g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 2  # cascade
    g.close()  # idempotent
    with Gallery(db) as g2:  # reopening does not migrate again or lose anything
        assert len(g2) == 1


def test_product_is_stored_whole_or_not_at_all(tmp_path: Path, photos) -> None:
    fake = FakeEmbedder()
    with Gallery(tmp_path / "g.db") as g:
        bad = np.full(fake.dim, np.nan, np.float32)
        good = fake.embed(photos[0][1])
        with pytest.raises(ValueError, match="NaN"):
            g.add_product("X", [(good, photos[0][1]), (bad, photos[1][1])], fake.model_id)
        # A failure inside the transaction after the product row was written: rolled back.
        rows = [(good.tobytes(), good.size, b"jpeg")]
        with pytest.raises(KeyboardInterrupt), g.transaction() as c:
            g._insert("Y", None, rows, fake.model_id, conn=c)
            raise KeyboardInterrupt
        assert len(g) == 0 and g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 0


def test_corrupt_unwritable_and_newer_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery(junk)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(GalleryError, match="newer"):
        Gallery(newer)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(GalleryError, match="writable"):
            Gallery(ro / "g.db")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GalleryError, match="folder"):
        Gallery(blocker / "g.db")  # its "folder" is a file


def test_reembedding_after_a_model_change(tmp_path: Path, photos) -> None:
    old, new = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)  # "e..." projects differently
    db = tmp_path / "g.db"
    with Gallery(db) as g:
        for label, image in photos[:3]:
            add(g, label, [image], old)
    with Gallery(db) as g:
        assert g.stale_views(new.model_id) == 3
        assert g.load(new.model_id)[1] == []
        seen = []
        assert g.reembed(new, progress=lambda done, total: seen.append((done, total))) == 3
        assert seen[-1] == (3, 3)
        emb, labels = g.load(new.model_id)
        assert labels == [lb for lb, _ in photos[:3]]
        # Re-embedded from the stored JPEG crop: close to embedding the original photo.
        direct = new.embed_many([im for _, im in photos[:3]])
        assert np.all(np.sum(emb * direct, axis=1) > 0.98)
        assert np.all(np.sum(emb * old.embed_many([im for _, im in photos[:3]]), axis=1) < 0.9)
        assert g.stale_views(new.model_id) == 0 and g.reembed(new) == 0


def test_change_detection_across_connections(tmp_path: Path, photos) -> None:
    fake = FakeEmbedder()
    db = tmp_path / "g.db"
    with Gallery(db) as reader, Gallery(db) as writer:
        assert reader.changed()  # first call: the initial state
        assert not reader.changed()
        reader.log_event({"status": "unknown", "label": "unknown"})
        writer.log_event({"status": "unknown", "label": "unknown"})  # events are not news
        assert not reader.changed()
        add(writer, "New", [photos[0][1]], fake)
        assert reader.changed() and not reader.changed()
        assert reader.load(fake.model_id)[1] == ["New"]


def test_export_import_same_and_other_model(tmp_path: Path, photos) -> None:
    a, e = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)
    with Gallery(tmp_path / "src.db") as src:
        add(src, "P1", [photos[0][1], photos[1][1]], a, code="111")
        add(src, "P2", [photos[2][1]], a)
        assert export_gallery(src, tmp_path / "set.zip") == 2
    names = zipfile.ZipFile(tmp_path / "set.zip").namelist()
    assert (
        "gallery.json" in names
        and "embeddings.npy" in names
        and sum(n.startswith("crops/") for n in names) == 3
    )

    with Gallery(tmp_path / "same.db") as dst:
        add(dst, "P2", [photos[5][1]], a)
        res = import_gallery(dst, tmp_path / "set.zip", a)
        assert res.added == ["P1"] and res.skipped == ["P2"] and res.reembedded == 0
        emb, labels = dst.load(a.model_id)
        assert labels == ["P2", "P1", "P1"]
        np.testing.assert_allclose(emb[1], a.embed(photos[0][1]), atol=1e-6)  # kept as exported
        assert dst.product("P1").code == "111"
        res = import_gallery(dst, tmp_path / "set.zip", a, replace=True)
        assert sorted(res.added) == ["P1", "P2"] and dst.product("P2").n_views == 1

    with Gallery(tmp_path / "other.db") as dst:
        res = import_gallery(dst, tmp_path / "set.zip", e)
        assert res.reembedded == 3 and dst.stale_views(e.model_id) == 0
        emb, labels = dst.load(e.model_id)
        assert np.sum(emb[0] * e.embed(photos[0][1])) > 0.98

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(tmp_path / "set.zip") as zin, zipfile.ZipFile(broken, "w") as zout:
        for n in zin.namelist():
            if n != "crops/00000001.jpg":
                zout.writestr(n, zin.read(n))
    with Gallery(tmp_path / "b.db") as dst:
        with pytest.raises(ValueError, match="missing"):
            import_gallery(dst, broken, e)
        assert len(dst) == 0  # nothing half-imported
        with pytest.raises(ValueError, match="not a gallery export"):
            import_gallery(dst, tmp_path / "src.db", e)
