"""Two models on one database (schema 6): embeddings kept per (view, model), each model re-embeds a
view once, a read-only command never writes, and the key changes with the bundle's preprocessing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from device import cli
from device.bundle import embedding_id, read_bundle_meta
from device.gallery import _MIGRATIONS, SCHEMA_VERSION, Gallery, encode_jpeg
from device.service import Recognizer

from .conftest import make_config
from .fakes import FakeEmbedder

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.mark.parametrize("version", [4, 5])
def test_an_older_database_keeps_its_embeddings(tmp_path: Path, photos, version: int) -> None:
    db = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for migrate in _MIGRATIONS[:version]:
        migrate(conn)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO products(name, created) VALUES ('Old', 'then')")
    a = FakeEmbedder("a" * 64)
    vectors = [a.embed(photos[i][1]) for i in (0, 1)]
    for v, (_, photo) in zip(vectors, photos, strict=False):
        conn.execute(
            "INSERT INTO views(product_id, embedding, dim, model_id, crop, created) "
            "VALUES (1, ?, ?, ?, ?, 'then')",
            (v.astype("<f4").tobytes(), v.size, a.model_id, encode_jpeg(photo)),
        )
    conn.execute("COMMIT")
    conn.close()
    with Gallery(db) as g:
        assert g.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        columns = [r[1] for r in g.conn.execute("PRAGMA table_info(views)")]
        assert columns == ["id", "product_id", "crop", "created"]
        emb, labels = g.load(a.model_id)
        assert labels == ["Old", "Old"] and np.allclose(emb, np.stack(vectors))
        assert g.stale_views(a.model_id) == 0
        assert [(v.model_id, v.dim) for v in g.views(1)] == [(a.model_id, a.dim)] * 2
        g.delete("Old")  # the embeddings go with their views
        assert g.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0


def test_a_database_lacking_a_table_of_its_version_is_refused(tmp_path: Path) -> None:
    from device.errors import GalleryError

    db = tmp_path / "v6.db"
    Gallery(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE embeddings")
    with pytest.raises(GalleryError, match="embeddings"):
        Gallery(db)


def test_two_models_coexist_and_each_embeds_a_view_once(tmp_path: Path, photos) -> None:
    cfg = make_config(tmp_path)
    a, b = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)
    with Gallery(cfg.gallery.path) as g:
        for name, photo in photos[:3]:
            g.add_product(name, [(a.embed(photo), photo)], a.model_id)
        before = g.load(a.model_id)
        Recognizer(b, g, cfg)  # `run` with model B: re-embeds the three views for B
        assert b.calls == 3 and g.stale_views(b.model_id) == 0
        # Model A's embeddings are untouched, and `run` with A has nothing to redo.
        after = g.load(a.model_id)
        assert after[1] == before[1] and np.array_equal(after[0], before[0])
        a.calls = b.calls = 0
        ra = Recognizer(a, g, cfg)
        rb = Recognizer(b, g, cfg)
        assert a.calls == b.calls == 0  # once per model: no re-embedding back and forth
        assert ra.matcher.products == rb.matcher.products == sorted(n for n, _ in photos[:3])
        # A product enrolled with B is embedded for A once, at A's next (re)load.
        g.add_product("New", [(b.embed(photos[3][1]), photos[3][1])], b.model_id)
        assert g.stale_views(a.model_id) == 1 and g.stale_views(b.model_id) == 0
        assert ra.refresh(force=True) and a.calls == 1 and "New" in ra.matcher.products


def fingerprint(db: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(db.parent.glob(db.name + "*")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_products_check_with_another_model_never_writes(
    tmp_path: Path, photos, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    db = tmp_path / "g.db"
    a, other = FakeEmbedder("a" * 64), FakeEmbedder("e" * 64)
    with Gallery(db) as g:
        for name, photo in photos[:3]:
            g.add_product(name, [(a.embed(p), p) for p in (photo, np.fliplr(photo))], a.model_id)
    before = fingerprint(db)
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: other)
    assert cli.main(["products", "check", "--db", str(db), "--json"]) == 0
    checked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["name"] for c in checked] == sorted(n for n, _ in photos[:3])
    assert all(c["views"] == 2 for c in checked)
    assert other.calls == 6  # embedded in memory ...
    assert fingerprint(db) == before  # ... and nothing written
    with Gallery(db) as g:
        assert g.stale_views(other.model_id) == 6 and g.stale_views(a.model_id) == 0


def test_a_preprocessing_edit_changes_the_key_of_the_views() -> None:
    meta = read_bundle_meta(DEFAULT)
    assert embedding_id(meta) == embedding_id(read_bundle_meta(DEFAULT))  # stable
    assert embedding_id(meta) != meta.model_id
    for change in (
        {"color_order": "BGR" if meta.input.color_order == "RGB" else "RGB"},
        {"resize": "linear" if meta.input.resize == "area" else "area"},
        {"height": meta.input.height + 32, "width": meta.input.width + 32},
    ):
        edited = dataclasses.replace(meta, input=dataclasses.replace(meta.input, **change))
        assert edited.model_id == meta.model_id  # the same model file ...
        assert embedding_id(edited) != embedding_id(meta)  # ... fed differently: another key
