"""Enrollment: guided on a scripted console with a synthetic camera, and from photos."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from device.background import BackgroundDetector
from device.crop import object_crop
from device.enroll import (
    EnrollAborted,
    EnrollInterrupted,
    enroll_from_images,
    guided_enroll,
    photo_side,
)
from device.gallery import Gallery, decode_jpeg
from device.images import load_image
from device.synthetic import LiveScene, SyntheticScene

from .conftest import FIXTURE, make_config
from .fakes import FakeEmbedder

BOX = (220, 140, 200, 200)


def views_of(product: str, n: int = 4) -> list[np.ndarray]:
    paths = sorted((FIXTURE / "train" / product).glob("*.jpg"))[:n]
    return [load_image(p) for p in paths]


class Person:
    """Scripted answers to the prompts: each prompt index maps to a change of the scene."""

    def __init__(self, scene: LiveScene, actions: list[Callable[[], None] | None]) -> None:
        self.scene, self.actions, self.prompts = scene, list(actions), []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.actions:
            raise EOFError
        action = self.actions.pop(0)
        if action is None:
            raise EOFError
        action()
        return ""


def test_guided_enrollment_refuses_a_duplicate_view(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fake = FakeEmbedder()
    scene = LiveScene(SyntheticScene(seed=5, noise=3.0, drift=0.1, drift_period=200))
    views = views_of("Oatly-Oat-Milk")
    person = Person(
        scene,
        [
            scene.clear,
            lambda: scene.show(views[0], BOX),
            lambda: scene.show(views[0], (230, 140, 200, 200)),  # "turned" but the same side
            lambda: scene.show(views[1], BOX),
            lambda: scene.show(views[2], BOX),
            lambda: scene.show(views[3], BOX),
        ],
    )
    said: list[str] = []
    with Gallery(cfg.gallery.path) as g:
        guided_enroll(
            "Oatly",
            source=scene,
            embedder=fake,
            gallery=g,
            config=cfg,
            views=4,
            code="7394376616",
            ask=person,
            say=said.append,
        )
        (product,) = g.products()
        assert (product.name, product.n_views, product.code) == ("Oatly", 4, "7394376616")
        emb, _ = g.load(fake.model_id)
        crops = [decode_jpeg(r[0]) for r in g.conn.execute("SELECT crop FROM views ORDER BY id")]
    assert sum("refused" in s for s in said) == 1
    assert "Clear the area" in person.prompts[0] and "quarter turn" in person.prompts[2]
    assert (
        "[2/4]" in person.prompts[2] and "[2/4]" in person.prompts[3]
    )  # the refused view is asked again
    # Each stored view is the recognition crop of its photo: it embeds like a scene crop of it.
    for photo, e, crop in zip([views[0], views[1], views[2], views[3]], emb, crops, strict=True):
        ref_scene = LiveScene(SyntheticScene(seed=5, noise=0.0))
        det = BackgroundDetector(cfg.detector)
        for _ in range(cfg.detector.learn_frames):
            det.detect(ref_scene.read())
        ref_scene.show(photo, BOX)
        frame = ref_scene.read()
        ref = object_crop(frame, det.detect(frame).box, cfg.detector.pad)[0]
        assert float(e @ fake.embed(ref)) > 0.97
        assert crop.shape[0] == crop.shape[1] and crop.shape[0] <= cfg.gallery.crop_size


@pytest.mark.parametrize("stop_at", [1, 3])
def test_interrupted_enrollment_stores_nothing(tmp_path: Path, stop_at: int) -> None:
    cfg = make_config(tmp_path)
    scene = LiveScene(SyntheticScene(seed=6, noise=2.0))
    views = views_of("Banana")
    actions: list = [scene.clear] + [lambda v=v: scene.show(v, BOX) for v in views]
    actions[stop_at + 1] = None  # input closes at that view
    with Gallery(cfg.gallery.path) as g:
        with pytest.raises(EnrollAborted):
            guided_enroll(
                "Banana",
                source=scene,
                embedder=FakeEmbedder(),
                gallery=g,
                config=cfg,
                ask=Person(scene, actions),
                say=lambda s: None,
            )
        assert len(g) == 0 and g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 0


def test_guided_enrollment_waits_for_a_placement(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, enroll={"timeout_s": 0.2})
    scene = LiveScene(SyntheticScene(seed=6, noise=2.0))
    views = views_of("Banana", 1)
    said: list[str] = []
    person = Person(scene, [scene.clear, scene.clear, lambda: scene.show(views[0], BOX)])
    with Gallery(cfg.gallery.path) as g:
        guided_enroll(
            "Banana",
            source=scene,
            embedder=FakeEmbedder(),
            gallery=g,
            config=cfg,
            views=1,
            ask=person,
            say=said.append,
        )
        assert g.product("Banana").n_views == 1
    assert any("no steady object" in s for s in said)


def test_enroll_from_images(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fake = FakeEmbedder()
    tree = tmp_path / "photos"
    for product in ("Banana", "Arla-Standard-Milk"):
        shutil.copytree(FIXTURE / "train" / product, tree / product)
    dup = tree / "Banana" / "zz_copy.jpg"
    shutil.copy(next(iter(sorted((tree / "Banana").glob("*.jpg")))), dup)
    (tree / "Banana" / "zz_broken.jpg").write_bytes(b"not a jpeg")
    with Gallery(cfg.gallery.path) as g:
        results = enroll_from_images(tree, embedder=fake, gallery=g, config=cfg, say=lambda s: None)
        assert [(r.name, r.views) for r in results] == [("Arla-Standard-Milk", 8), ("Banana", 8)]
        skipped = results[1].skipped
        assert any("near-duplicate" in s for s in skipped) and any(
            "zz_broken" in s for s in skipped
        )
        single = enroll_from_images(
            FIXTURE / "train" / "Oatly-Oat-Milk",
            embedder=fake,
            gallery=g,
            config=cfg,
            name="Oat milk",
            code="123",
            say=lambda s: None,
        )
        assert single[0].name == "Oat milk" and g.product("Oat milk").code == "123"
        with pytest.raises(ValueError, match="already exist"):
            enroll_from_images(tree, embedder=fake, gallery=g, config=cfg, say=lambda s: None)
        with pytest.raises(ValueError, match="sub-folder"):
            enroll_from_images(
                tree, embedder=fake, gallery=g, config=cfg, name="X", say=lambda s: None
            )
        emb, labels = g.load(fake.model_id)
    # The photo is the crop: the stored embedding is the photo's, reduced to what the stored crop
    # needs as it was read (the fixture's 348 px photos to [gallery] crop_size).
    first = sorted((FIXTURE / "train" / "Arla-Standard-Milk").glob("*.jpg"))[0]
    assert labels[0] == "Arla-Standard-Milk"
    side = photo_side(fake, cfg)
    assert side == cfg.gallery.crop_size == 320
    np.testing.assert_allclose(emb[0], fake.embed(load_image(first, max_side=side)), atol=1e-6)


def _tree(root: Path, products: tuple[str, ...], n: int = 2) -> Path:
    for product in products:
        (root / product).mkdir(parents=True)
        for src in sorted((FIXTURE / "train" / product).glob("*.jpg"))[:n]:
            shutil.copy(src, root / product / src.name)
    return root


PRODUCTS = ("Arla-Standard-Milk", "Banana", "Oatly-Oat-Milk")


def test_photo_enrollment_interrupted_right_after_a_commit_counts_that_product(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM becomes a KeyboardInterrupt wherever Python is: here just after the second
    # product's transaction committed, before add_product returned.
    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS)
    with Gallery(cfg.gallery.path) as g:
        real_add = g.add_product

        def add_then_interrupt(name: str, *args: object, **kw: object) -> int:
            pid = real_add(name, *args, **kw)
            if name == "Banana":
                raise KeyboardInterrupt
            return pid

        monkeypatch.setattr(g, "add_product", add_then_interrupt)
        with pytest.raises(EnrollInterrupted) as info:
            enroll_from_images(tree, embedder=FakeEmbedder(), gallery=g, config=cfg, say=print)
        assert info.value.stored == ["Arla-Standard-Milk", "Banana"]
        assert info.value.not_stored == ["Oatly-Oat-Milk"]
        assert [p.name for p in g.products()] == ["Arla-Standard-Milk", "Banana"]
    summary = info.value.summary()
    assert "stored 2 of 3 products" in summary and "--skip-existing" in summary


def test_photo_enrollment_interrupted_before_any_product_stored(tmp_path: Path) -> None:
    class Interrupting(FakeEmbedder):
        def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
            raise KeyboardInterrupt

    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS)
    with Gallery(cfg.gallery.path) as g:
        with pytest.raises(EnrollInterrupted) as info:
            enroll_from_images(tree, embedder=Interrupting(), gallery=g, config=cfg, say=print)
        assert len(g) == 0
    assert info.value.stored == [] and info.value.summary() == "nothing was stored."


def test_photo_enrollment_failing_part_way_says_what_was_stored(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS)
    for photo in (tree / "Banana").glob("*.jpg"):
        photo.write_bytes(b"not a jpeg")
    said: list[str] = []
    with Gallery(cfg.gallery.path) as g:
        with pytest.raises(ValueError, match="Banana: none of its 2 photos"):
            enroll_from_images(
                tree, embedder=FakeEmbedder(), gallery=g, config=cfg, say=said.append
            )
        assert [p.name for p in g.products()] == ["Arla-Standard-Milk"]
    assert "stored 1 of 3 products: Arla-Standard-Milk" in said[-1]


def test_skip_existing_and_append_exclude_each_other(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS[:1])
    with Gallery(cfg.gallery.path) as g, pytest.raises(ValueError, match="only one"):
        enroll_from_images(
            tree,
            embedder=FakeEmbedder(),
            gallery=g,
            config=cfg,
            append=True,
            skip_existing=True,
            say=print,
        )


def test_append_from_the_same_photos_adds_no_duplicate_views(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS[:1], n=2)
    more = _tree(tmp_path / "more", PRODUCTS[:1], n=3)  # the same two photos and a new one
    said: list[str] = []
    kw = {"embedder": FakeEmbedder(), "config": cfg, "say": said.append}
    with Gallery(cfg.gallery.path) as g:
        enroll_from_images(tree, gallery=g, **kw)
        assert enroll_from_images(tree, gallery=g, append=True, **kw) == []  # nothing new
        assert g.product(PRODUCTS[0]).n_views == 2
        assert f"Nothing new for {PRODUCTS[0]!r}: its usable photos are already stored" in said
        (result,) = enroll_from_images(more, gallery=g, append=True, **kw)
        assert result.views == 1 and len(result.skipped) == 2
        assert g.product(PRODUCTS[0]).n_views == 3
    assert f"Stored {PRODUCTS[0]!r} with 1 views (3 in all) (2 skipped)" in said


def test_rerunning_an_append_with_an_unreadable_photo_is_nothing_new(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    tree = _tree(tmp_path / "photos", PRODUCTS[:2], n=2)
    (tree / PRODUCTS[0] / "broken.jpg").write_bytes(b"not a jpeg")
    said: list[str] = []
    kw = {"embedder": FakeEmbedder(), "config": cfg, "say": said.append, "append": True}
    with Gallery(cfg.gallery.path) as g:
        enroll_from_images(tree, gallery=g, **kw)
        assert enroll_from_images(tree, gallery=g, **kw) == []  # the same command again
        assert [(p.name, p.n_views) for p in g.products()] == [(n, 2) for n in PRODUCTS[:2]]


def test_folders_naming_one_product_twice_are_refused_before_any_work(tmp_path: Path) -> None:
    import unicodedata

    from device.enroll import product_folders

    root = _tree(tmp_path / "photos", ("Banana",), n=1)
    shutil.copytree(root / "Banana", root / "Banana ")  # a trailing space: the same product
    with pytest.raises(ValueError, match="name the same product"):
        product_folders(root, None)
    one = tmp_path / unicodedata.normalize("NFD", "mjölk")
    shutil.copytree(root / "Banana", one)
    assert product_folders(one / ".", None)[0][0] == one.name  # "." names the folder itself
