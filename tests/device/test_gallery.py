"""The SQLite product database: atomic products, WAL, schema, corruption, re-embedding, export."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.config import Config
from device.errors import GalleryError, ProductExists, ProductNotFound
from device.gallery import SCHEMA_VERSION, Gallery
from device.service import Recognizer
from device.transfer import export_gallery, import_gallery, read_gallery_export

from .fakes import FakeEmbedder

ROOT = Path(__file__).resolve().parents[2]


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
        with pytest.raises(ProductExists, match="already exists"):  # a ValueError
            add(g, "Milk", [photos[0][1]], fake)
        add(g, "Milk", [photos[0][1]], fake, append=True)
        emb, labels = g.load(fake.model_id)
        assert emb.shape == (4, fake.dim) and labels == ["Banana", "Banana", "Milk", "Milk"]
        np.testing.assert_allclose(emb[0], fake.embed(photos[2][1]), atol=1e-6)
        g.rename("Milk", "Arla milk")
        with pytest.raises(ProductNotFound, match="no product"):  # a ValueError
            g.delete("Milk")
        with pytest.raises(ProductNotFound):
            g.rename("Milk", "x")
        with pytest.raises(ProductExists):
            g.rename("Arla milk", "Banana")
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
            g.insert_product("Y", None, rows, fake.model_id, conn=c)
            raise KeyboardInterrupt
        assert len(g) == 0 and g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 0


def test_corrupt_unwritable_and_newer_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery(junk)
    newer = tmp_path / "later.db"
    Gallery(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(GalleryError, match="newer than this software"):
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


# --- fault handling ------------------------------------------------------------------------------


def test_read_only_file_is_refused_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "g.db"
    Gallery(db).close()
    real_connect = sqlite3.connect

    def read_only(database: str, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        # What SQLite does with a file it may not write (also for root without CAP_DAC_OVERRIDE).
        return real_connect(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(GalleryError, match=r"g\.db is not writable .*permissions and owner"):
        Gallery(db)


def _unprivileged(tmp_path: Path) -> list[str]:
    """A command prefix that runs without root's power to write any file, as the tester did;
    skips when that is not possible here."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot test permissions")
    probe = tmp_path / "probe"
    probe.write_text("")
    probe.chmod(0o444)
    ok = subprocess.run([*prefix, "sh", "-c", f"echo x >> {probe}"], capture_output=True)
    probe.unlink()
    if ok.returncode == 0:
        pytest.skip("setpriv cannot drop root's file permissions here")
    return prefix


def test_read_only_file_and_folder_from_the_command_line(tmp_path: Path) -> None:
    prefix = _unprivileged(tmp_path)
    db = tmp_path / "g.db"
    Gallery(db).close()
    db.chmod(0o444)  # the file read-only, its folder writable
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, sys.executable, "-m", "device", *args, "--db", str(db)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        proc = cli("products", "delete", "Nothing")
        assert proc.returncode == 4, proc.stderr
        assert "is not writable" in proc.stderr and "Traceback" not in proc.stderr
        for f in tmp_path.glob("g.db*"):  # the refused open left -wal and -shm, read-only too
            f.chmod(0o644)
        proc = cli("gallery", "export", str(ro / "x.zip"))
        assert proc.returncode == 2, proc.stderr
        assert "cannot write the export file" in proc.stderr and "Traceback" not in proc.stderr
        assert list(ro.iterdir()) == []  # no x.zip.tmp left behind
    finally:
        ro.chmod(0o755)


def test_write_failures_are_gallery_errors(tmp_path: Path, photos) -> None:
    fake = FakeEmbedder()
    with Gallery(tmp_path / "src.db") as src:
        add(src, "Q", [photos[3][1]], fake)
        export_gallery(src, tmp_path / "set.zip")
    with Gallery(tmp_path / "g.db") as g:
        add(g, "P", [photos[0][1]], fake)
        g.conn.execute("PRAGMA query_only = ON")  # every write now fails as on a read-only file
        writes: list[Callable[[], object]] = [
            lambda: add(g, "New", [photos[1][1]], fake),
            lambda: g.rename("P", "P2"),
            lambda: g.delete("P"),
            lambda: g.log_event({"status": "unknown", "label": "unknown"}),
            lambda: import_gallery(g, tmp_path / "set.zip", fake),
            lambda: g.reembed(FakeEmbedder("e" * 64)),
        ]
        for write in writes:
            with pytest.raises(GalleryError, match="is not writable"):
                write()
            assert not g.conn.in_transaction  # rolled back, not left holding the write lock
        g.conn.execute("PRAGMA query_only = OFF")
        g.rename("P", "P2")  # the gallery still works
        assert [p.name for p in g.products()] == ["P2"]


class _CommitFails:
    """A connection whose COMMIT fails as on a full disk (SQLite writes the WAL at commit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_disk_full_rolls_back_with_a_clear_error(tmp_path: Path, photos) -> None:
    fake = FakeEmbedder()
    db = tmp_path / "g.db"
    with Gallery(db) as g:
        real = g.conn
        g._conn = _CommitFails(real)  # type: ignore[assignment]
        with pytest.raises(GalleryError, match=r"disk .* is full .*free some space"):
            add(g, "P", [photos[0][1], photos[1][1]], fake)
        assert not real.in_transaction
        g._conn = real
        assert len(g) == 0 and g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 0
        # A real SQLITE_FULL: the file may not grow.
        pages = g.conn.execute("PRAGMA page_count").fetchone()[0]
        g.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(GalleryError, match="is full"):
            add(g, "P", [photos[0][1], photos[1][1]], fake)
        with pytest.raises(GalleryError, match="is full"):
            for _ in range(50):
                g.log_event({"status": "unknown", "label": "x" * 1000})
        g.conn.execute("PRAGMA max_page_count = 1000000")
        add(g, "P", [photos[0][1]], fake)
    with Gallery(db) as g:
        assert [(p.name, p.n_views) for p in g.products()] == [("P", 1)]


def test_concurrent_first_opens_of_a_new_file(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def open_it(path: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            Gallery(path).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    for i in range(25):
        path, barrier = tmp_path / f"g{i}.db", threading.Barrier(4)
        threads = [threading.Thread(target=open_it, args=(path, barrier)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        with Gallery(path) as g:
            assert g.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal" and len(g) == 0


def _tables(path: Path) -> tuple[list[str], str]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master ORDER BY name")]
        return names, conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_a_damaged_or_foreign_file_of_an_older_version_is_not_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v1-like.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events(ts TEXT, label TEXT, status TEXT)")
    conn.execute("CREATE TABLE meta(key TEXT, value TEXT)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(GalleryError, match="products, views are missing"):
        Gallery(db)
    assert _tables(db) == (["events", "meta"], "delete")  # not converted, nothing added


def test_another_applications_database_is_refused_unchanged(tmp_path: Path) -> None:
    for version in (3, 0):
        other = tmp_path / f"other{version}.db"
        conn = sqlite3.connect(other)
        conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
        conn.close()
        with pytest.raises(
            GalleryError,
            match=r"is an SQLite database but not a product database \(tables: notes\): give "
            "another --db path",
        ):
            Gallery(other)
        assert _tables(other) == (["notes"], "delete")  # not converted, nothing added
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # e.g. made by `touch`: a new database
    with Gallery(empty) as g:
        assert len(g) == 0 and g.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    damaged = tmp_path / "damaged.db"
    Gallery(damaged).close()
    conn = sqlite3.connect(damaged)
    conn.execute("DROP TABLE events")
    conn.close()
    with pytest.raises(GalleryError, match=r"events are missing.*corrupt"):
        Gallery(damaged)


def test_unreadable_crop_during_reembedding(
    tmp_path: Path, photos, cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)
    with Gallery(cfg.gallery.path) as g:
        add(g, "P1", [photos[0][1], photos[1][1]], old)
        add(g, "P2", [photos[2][1]], old)
        add(g, "P3", [photos[3][1]], old)
        bad = {
            name: g.conn.execute(
                "SELECT MIN(v.id) FROM views v JOIN products p ON p.id = v.product_id "
                "WHERE p.name = ?",
                (name,),
            ).fetchone()[0]
            for name in ("P1", "P2")
        }
        g.conn.execute("UPDATE views SET crop = ? WHERE id = ?", (b"not a jpeg", bad["P1"]))
        g.conn.execute("UPDATE views SET crop = ? WHERE id = ?", (b"", bad["P2"]))
    with Gallery(cfg.gallery.path) as g, caplog.at_level(logging.WARNING, "device.gallery"):
        recognizer = Recognizer(new, g, cfg)  # what `run` does at start: re-embeds, then loads
        assert recognizer.matcher.products == ["P1", "P3"] and recognizer.matcher.n_views == 2
        # The undecodable views are kept for their old model (a rollback still matches them);
        # the old model keeps the embeddings of every view (models coexist, schema 6).
        assert [(p.name, p.n_views) for p in g.products()] == [("P1", 2), ("P2", 1), ("P3", 1)]
        assert g.stale_views(new.model_id) == 2 and len(g.load(old.model_id)[1]) == 4
        text = caplog.text
        assert f"'P1': the stored crop of view {bad['P1']} cannot be decoded" in text
        assert f"'P2': the stored crop of view {bad['P2']}" in text
        assert "'P2' has no views for this model" in text and "enroll it again" in text
        assert "'P1' has no views" not in text
        caplog.clear()
        assert g.reembed(new) == 0 and not caplog.records  # not retried on every reload
        # The export leaves the undecodable views out; P2 travels without views.
        assert export_gallery(g, tmp_path / "set.zip") == 3
    with Gallery(tmp_path / "copy.db") as dst:
        assert import_gallery(dst, tmp_path / "set.zip", new).added == ["P1", "P2", "P3"]
        assert dst.product("P2").n_views == 0


@pytest.fixture(scope="module")
def export_file(tmp_path_factory: pytest.TempPathFactory, photos) -> Path:
    """An export of P1 (2 views) and P2 (1 view) made by model "a..."."""
    folder = tmp_path_factory.mktemp("export")
    a = FakeEmbedder("a" * 64)
    with Gallery(folder / "src.db") as src:
        add(src, "P1", [photos[0][1], photos[1][1]], a)
        add(src, "P2", [photos[2][1]], a)
        export_gallery(src, folder / "set.zip")
    return folder / "set.zip"


def _rewrite(
    src: Path,
    dst: Path,
    change: Callable[[dict[str, Any]], object] | None = None,
    members: dict[str, bytes] | None = None,
) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "gallery.json" and change is not None:
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(name, (members or {}).get(name, data))
    return dst


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _view(m: dict[str, Any]) -> dict[str, Any]:
    return m["products"][0]["views"][0]


DAMAGED: dict[str, tuple[Callable[[dict[str, Any]], object] | None, dict[str, bytes], str]] = {
    "no name": (lambda m: m["products"][0].pop("name"), {}, "product 1 has no name"),
    "blank name": (lambda m: m["products"][1].update(name=" \t"), {}, "product 2 has no name"),
    "products null": (lambda m: m.update(products=None), {}, '"products" is not a list'),
    "product not an object": (lambda m: m["products"].append("P3"), {}, "product 3 is not an"),
    "twice": (lambda m: m["products"][1].update(name=" P1"), {}, "'P1' appears twice"),
    "views null": (lambda m: m["products"][0].update(views=None), {}, "views of product 'P1'"),
    "row text": (lambda m: _view(m).update(row="0"), {}, "points to row '0'"),
    "row too big": (lambda m: _view(m).update(row=3), {}, "points to row 3 "),
    "row negative": (lambda m: _view(m).update(row=-1), {}, "points to row -1 "),
    "no model_id": (lambda m: _view(m).pop("model_id"), {}, "has no crop or model_id"),
    "dims null": (lambda m: m.update(dims=None), {}, '"dims" is not a list'),
    "dims text": (lambda m: m.update(dims=["192"] * 3), {}, '"dims" is not a list'),
    "dims short": (lambda m: m["dims"].pop(), {}, '"dims" lists 2 embeddings, .* holds 3'),
    "dim too small": (lambda m: m["dims"].__setitem__(1, 100), {}, "gives row 1 100 values"),
    "dims too big": (lambda m: m.update(dims=[200] * 3), {}, "has 200 values, the rows .* 192"),
    "crop missing": (lambda m: _view(m).update(crop="crops/x.jpg"), {}, "crops/x.jpg .* missing"),
    "not json": (None, {"gallery.json": b"{"}, "gallery.json is not valid JSON"),
    "npy garbage": (None, {"embeddings.npy": b"garbage"}, "embeddings.npy is not a readable"),
    "npy 1-D": (None, {"embeddings.npy": _npy(np.zeros(3, "<f4"))}, "not a 2-D array"),
    "npy NaN": (None, {"embeddings.npy": _npy(np.full((3, 192), np.nan, "<f4"))}, "NaN"),
    "crop not JPEG": (
        None,
        {"crops/00000002.jpg": b"\xff\xd8 not really"},
        r"crop crops/00000002\.jpg of product 'P1' is not a readable JPEG",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_export_files_are_refused(tmp_path: Path, export_file: Path, case: str) -> None:
    change, members, what = DAMAGED[case]
    broken = _rewrite(export_file, tmp_path / "broken.zip", change, members)
    pattern = rf"broken\.zip is not a valid gallery export: .*{what}"
    with pytest.raises(ValueError, match=pattern):
        read_gallery_export(broken)  # checked without any database
    with Gallery(tmp_path / "g.db") as dst:
        # The same model keeps the exported embeddings, another re-embeds the crops: both check.
        for embedder in (FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)):
            with pytest.raises(ValueError, match=pattern) as info:
                import_gallery(dst, broken, embedder)
            assert "the database is damaged" not in str(info.value)
            assert len(dst) == 0  # nothing imported


def test_import_refuses_embeddings_of_another_size(tmp_path: Path, export_file: Path) -> None:
    same_id_other_size = FakeEmbedder("a" * 64, size=4)  # 48 values; the export holds 192
    with Gallery(tmp_path / "g.db") as dst:
        with pytest.raises(ValueError, match=r"have \[192\] values, the model makes \[48\]"):
            import_gallery(dst, export_file, same_id_other_size)
        assert len(dst) == 0
        res = import_gallery(dst, read_gallery_export(export_file), FakeEmbedder("a" * 64))
        assert res.added == ["P1", "P2"] and res.reembedded == 0


def test_export_destinations(tmp_path: Path, photos, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEmbedder()
    with Gallery(tmp_path / "g.db") as g:
        add(g, "P", [photos[0][1]], fake)
        folder = tmp_path / "out"
        folder.mkdir()
        with pytest.raises(ValueError, match=r"out is a folder: give the name of the file"):
            export_gallery(g, folder)
        with pytest.raises(ValueError, match=r"the folder .*missing does not exist"):
            export_gallery(g, tmp_path / "missing" / "x.zip")

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(zipfile.ZipFile, "writestr", full)  # the disk fills while writing
        with pytest.raises(ValueError, match=r"cannot write the export file .*No space left"):
            export_gallery(g, folder / "x.zip")
        monkeypatch.undo()
        assert list(folder.iterdir()) == [] and not (tmp_path / "out.tmp").exists()
        assert export_gallery(g, folder / "x.zip") == 1
        assert [p.name for p in folder.iterdir()] == ["x.zip"]


def test_a_schema_1_database_is_migrated_without_loss(tmp_path: Path) -> None:
    from device.gallery import _v0_to_v1

    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    _v0_to_v1(conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO products(name, code, created) VALUES ('Old', NULL, 'then')")
    for name in (unicodedata.normalize("NFD", " mjölk"), "mjölk"):  # one name, two spellings
        conn.execute("INSERT INTO products(name, created) VALUES (?, 'then')", (name,))
    conn.execute(
        "INSERT INTO views(product_id, embedding, dim, model_id, crop, created) "
        "VALUES (1, ?, 2, 'm', ?, 'then')",
        (np.array([0.6, 0.8], "<f4").tobytes(), b"jpeg"),
    )
    conn.execute(
        "INSERT INTO events(ts, label, status, score, box) "
        "VALUES ('then', 'Old', 'known', 0.9, '[1, 2, 3, 4]')"
    )
    conn.execute("COMMIT")
    conn.close()
    with Gallery(db) as g:
        assert g.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        # names normalised (schema 4): the decomposed one is found by its usual spelling
        assert [p.name for p in g.products()] == ["Old", "mjölk", "mjölk (2)"]
        assert g.product("mjölk") is not None
        emb, labels = g.load("m")
        assert labels == ["Old"] and np.allclose(emb, [[0.6, 0.8]])
        # schema 6: the embedding moved to its own table, under the model id that made it
        assert [r[1] for r in g.conn.execute("PRAGMA table_info(views)")] == [
            "id", "product_id", "crop", "created"
        ]  # fmt: skip
        assert [(v.model_id, v.dim) for v in g.views(1)] == [("m", 2)]
        g.log_event({"time": "now", "label": "Old", "status": "known", "score": 0.8,
                     "best": "Old", "box": [5, 6, 7, 8], "crop_box": [4, 5, 9, 9], "frame": 12})  # fmt: skip
        old, new = g.events(10)
    # best filled in from the label of a known event; what schema 1 never had stays empty
    assert (old["time"], old["label"], old["box"], old["best"], old["frame"]) == (
        "then", "Old", [1, 2, 3, 4], "Old", None
    )  # fmt: skip
    assert (new["best"], new["crop_box"], new["frame"]) == ("Old", [4, 5, 9, 9], 12)
    # schema 5: every row has a stable id, the old ones too (given at migration)
    assert len(old["id"]) == 32 and len(new["id"]) == 32 and old["id"] != new["id"]


def test_export_never_touches_a_file_beside_it(tmp_path: Path, photos, cfg: Config) -> None:
    emb = FakeEmbedder()
    with Gallery(cfg.gallery.path) as g:
        add(g, "P1", [photos[0][1]], emb)
        neighbour = tmp_path / "set.zip.tmp"
        neighbour.write_bytes(b"the user's")
        assert export_gallery(g, tmp_path / "set.zip") == 1
    assert neighbour.read_bytes() == b"the user's"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".set.zip")]


def test_reembedding_reports_each_batch_and_keeps_finished_batches(
    tmp_path: Path, photos, cfg: Config
) -> None:
    from device.service import NullNotifier

    class Recording(NullNotifier):
        def __init__(self) -> None:
            self.sent: list[str] = []

        def extend_timeout(self, seconds: float) -> bool:
            self.sent.append(f"extend {seconds:.0f}")
            return True

        def watchdog(self, *, force: bool = False) -> bool:
            self.sent.append("watchdog")
            return True

    old, new = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)
    with Gallery(cfg.gallery.path) as g:
        for i in range(5):
            add(g, f"P{i}", [photos[i % len(photos)][1]], old)
        # A start cut short after the first batch: what was done is kept.
        calls = []

        def stop_after_first(done: int, total: int) -> None:
            calls.append(done)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            g.reembed(new, batch=2, progress=stop_after_first)
        assert calls == [2] and g.stale_views(new.model_id) == 3
        notifier = Recording()
        Recognizer(new, g, cfg, notifier=notifier)  # what `run` does at start
        assert g.stale_views(new.model_id) == 0
    # one extension before, then per batch of 32 (here one batch): time asked for as it goes
    assert notifier.sent.count("extend 60") == 2 and "watchdog" in notifier.sent


def test_transfer_uses_the_gallery_public_methods_only() -> None:
    import re

    import device.transfer

    source = Path(device.transfer.__file__).read_text()
    assert not re.findall(r"gallery\._\w+", source)
    assert issubclass(ProductExists, ValueError) and issubclass(ProductNotFound, ValueError)
