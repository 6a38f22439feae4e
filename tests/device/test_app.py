"""DeviceApp: the operations the CLI and a web layer call, and commands into the running loop."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest

from device.app import DeviceApp
from device.commands import (
    Call,
    CancelEnroll,
    CaptureView,
    FinishEnroll,
    ReloadProducts,
    StartEnroll,
)
from device.config import Config
from device.errors import (
    GalleryError,
    LoopNotRunningError,
    NearDuplicateView,
    ProductExists,
    ProductNotFound,
)
from device.images import load_image
from device.synthetic import LiveScene, SyntheticScene

from .conftest import FIXTURE
from .fakes import FakeEmbedder

BOX = (220, 140, 200, 200)


def views_of(product: str, n: int = 4) -> list[np.ndarray]:
    paths = sorted((FIXTURE / "train" / product).glob("*.jpg"))[:n]
    return [load_image(p) for p in paths]


def make_app(cfg: Config, **kw: object) -> DeviceApp:
    return DeviceApp(cfg, embedder_factory=lambda path, n: FakeEmbedder(), out=io.StringIO(), **kw)


def test_product_operations_and_typed_errors(cfg: Config) -> None:
    with make_app(cfg) as app:
        res = app.enroll_images("Banana", views_of("Banana", 3), code="123")
        assert (res.product.name, res.product.code, res.views_added) == ("Banana", "123", 3)
        p = app.product("Banana")
        with pytest.raises(ProductExists):
            app.enroll_images("Banana", views_of("Banana", 1))
        with pytest.raises(ValueError, match="already stored"):  # the same photos again
            app.enroll_images("Banana", views_of("Banana", 3), append=True)
        more = app.enroll_images("Banana", views_of("Banana", 4), append=True)
        assert more.views_added == 1 and len(more.skipped) == 3 and more.product.n_views == 4
        assert [p.name for p in app.products()] == ["Banana"]
        p = app.product("Banana")
        assert app.product(p.id) == p
        views = app.views("Banana")
        assert len(views) == p.n_views and app.view_crop_jpeg(views[0].id)[:2] == b"\xff\xd8"
        assert app.rename("Banana", "Cavendish").name == "Cavendish"
        assert app.set_code("Cavendish", "999").code == "999"
        app.delete_view(views[0].id)
        assert app.product("Cavendish").n_views == p.n_views - 1
        with pytest.raises(ProductNotFound):
            app.product("Banana")
        with pytest.raises(ProductNotFound):
            app.view_crop_jpeg(views[0].id)
        app.enroll_images("Apple", views_of("Red-Bell-Pepper", 1))
        with pytest.raises(ProductExists):
            app.rename("Apple", "Cavendish")
        report = app.check()
        assert report.threshold == cfg.matcher.threshold
        assert sorted(c.name for c in report.checks) == ["Apple", "Cavendish"]
        app.delete_product("Cavendish")
        with pytest.raises(ProductNotFound):
            app.delete_product("Cavendish")
        status = app.status()
        assert status["products"] == 1 and status["running"] is False
        assert status["camera"] == "stopped" and status["db_bytes"] > 0


def test_reading_commands_never_create_a_database(tmp_path: Path, cfg: Config) -> None:
    with pytest.raises(GalleryError, match="no product database"):
        make_app(cfg, create_db=False)
    assert not Path(cfg.gallery.path).exists()


def test_commands_need_the_running_loop(cfg: Config) -> None:
    with make_app(cfg) as app, pytest.raises(LoopNotRunningError):
        app.submit(ReloadProducts()).result(1)


def test_export_import_and_events(tmp_path: Path, cfg: Config, photos) -> None:
    with make_app(cfg) as app:
        app.enroll_images("Banana", views_of("Banana", 2))
        assert app.export_gallery(tmp_path / "set.zip") == 1
    other = cfg.replace("gallery", path=str(tmp_path / "other.db"))
    with make_app(other) as app:
        res = app.import_gallery(tmp_path / "set.zip")
        assert res.added == ["Banana"]
        assert app.events() == []


def wait_state(app: DeviceApp, state: str, timeout: float = 60.0) -> None:
    last = 0
    while True:
        snap = app.hub.wait_newer(last, timeout)
        assert snap is not None, f"no frame with state {state!r}"
        if snap.state == state:
            return
        last = snap.number


def test_enrollment_session_through_submit_while_the_loop_runs(cfg: Config) -> None:
    scene = LiveScene(SyntheticScene(seed=5, noise=3.0, drift=0.1, drift_period=200))
    views = views_of("Oatly-Oat-Milk")
    stop = threading.Event()
    with make_app(cfg) as app:
        result: dict = {}
        loop = threading.Thread(
            target=lambda: result.update(
                stats=app.run(source_factory=lambda: scene, should_stop=stop.is_set)
            )
        )
        loop.start()
        try:

            def do(command: object) -> object:
                return app.submit(command).result(60)

            def place(image: np.ndarray | None, box: tuple = BOX) -> None:
                # Changed on the loop thread between two frames: the order of events is fixed.
                do(Call(lambda: scene.show(image, box) if image is not None else scene.clear()))

            wait_state(app, "empty")
            sid = do(StartEnroll("Oatly", code="7394376616", views=3))
            with pytest.raises(ValueError, match="in progress"):
                do(StartEnroll("Other"))
            with pytest.raises(ValueError, match="no steady object"):
                do(CaptureView(sid))
            taken = []
            for i, image in enumerate([views[0], views[0], views[1], views[2]]):
                place(image, BOX if i != 1 else (230, 140, 200, 200))
                wait_state(app, "stable")
                if i == 1:  # the same side again: refused, nothing taken
                    with pytest.raises(NearDuplicateView):
                        do(CaptureView(sid))
                else:
                    info = do(CaptureView(sid))
                    taken.append(info.index)
                    assert info.crop_jpeg[:2] == b"\xff\xd8" and info.of == 3
                place(None)
                wait_state(app, "empty")
            assert taken == [1, 2, 3]
            assert app.products() == []  # nothing stored before Finish
            product = do(FinishEnroll(sid))
            assert (product.name, product.n_views, product.code) == ("Oatly", 3, "7394376616")
            with pytest.raises(ProductNotFound):
                do(CancelEnroll(sid))  # finished: the session is gone
            # A cancelled session stores nothing.
            sid2 = do(StartEnroll("Nothing", views=1))
            assert do(CancelEnroll(sid2)) is None
            assert [p.name for p in app.products()] == ["Oatly"]
            # Recognised from the next placement on, without a restart.
            q = app.bus.subscribe()
            place(views[1], (300, 150, 200, 200))
            event = q.get(timeout=60)
            assert (event.status, event.label) == ("known", "Oatly")
            assert app.status()["running"] is True
        finally:
            stop.set()
            loop.join(60)
    assert not loop.is_alive() and result["stats"].n_events == 1


class ThreadRecordingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        self.threads.add(threading.get_ident())
        return super().embed(crop_bgr)


def test_operations_from_another_thread_embed_on_the_loop_thread(cfg: Config) -> None:
    emb = ThreadRecordingEmbedder()
    scene = LiveScene(SyntheticScene(seed=3, noise=2.0))
    stop = threading.Event()
    loop_ident: dict = {}
    app = DeviceApp(cfg, embedder_factory=lambda path, n: emb, out=io.StringIO())

    def run() -> None:
        loop_ident["id"] = threading.get_ident()
        app.run(source_factory=lambda: scene, should_stop=stop.is_set)

    with app:
        loop = threading.Thread(target=run)
        loop.start()
        try:
            wait_state(app, "empty")
            res = app.enroll_images("Banana", views_of("Banana", 3))
            assert res.views_added == 3
            assert [c.name for c in app.check().checks] == ["Banana"]
        finally:
            stop.set()
            loop.join(60)
    assert emb.threads == {loop_ident["id"]}  # the interpreter is only ever used by the loop
