"""Shared pieces of the web tests: a DeviceApp with the stand-in embedder (optionally with its
loop running on a live synthetic scene) and Starlette's TestClient on the web app."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from starlette.testclient import TestClient

from device.app import DeviceApp
from device.commands import Call
from device.config import Config
from device.images import load_image
from device.synthetic import LiveScene, SyntheticScene
from device.web.context import WebContext
from device.web.password import hash_password
from device.web.routes import build_app

from ..device.conftest import FIXTURE, make_config
from ..device.fakes import FakeEmbedder

PASSWORD = "counter-top-42"
# One scrypt hash for the session: hashing costs ~0.1 s.
PASSWORD_HASH = hash_password(PASSWORD)


def photos_of(product: str, n: int = 4) -> list[np.ndarray]:
    return [load_image(p) for p in sorted((FIXTURE / "train" / product).glob("*.jpg"))[:n]]


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def web_config(tmp_path: Path, **web: Any) -> Config:
    cfg = make_config(tmp_path)
    return cfg.replace("web", **web) if web else cfg


@dataclass
class Web:
    app: DeviceApp
    ctx: WebContext
    client: TestClient
    scene: LiveScene | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the CSRF header once logged in

    def login(self) -> dict[str, Any]:
        r = self.client.post("/api/login", json={"password": PASSWORD})
        assert r.status_code == 200, r.text
        return r.json()

    def place(self, image: np.ndarray | None, box: tuple[int, int, int, int]) -> None:
        """Put a product in front of the synthetic camera (changed between two frames)."""
        assert self.scene is not None
        scene = self.scene
        self.app.submit(
            Call(lambda: scene.show(image, box) if image is not None else scene.clear())
        ).result(60)

    def wait_state(self, state: str, timeout: float = 60.0) -> None:
        last = 0
        while True:
            snap = self.app.hub.wait_newer(last, timeout)
            assert snap is not None, f"no frame with state {state!r}"
            if snap.state == state:
                return
            last = snap.number


def _web(tmp_path: Path, *, password: str | None, loop: bool, **web: Any) -> Iterator[Web]:
    cfg = web_config(tmp_path, **web)
    app = DeviceApp(cfg, embedder_factory=lambda path, n: FakeEmbedder(), out=io.StringIO())
    ctx = WebContext(app, cfg, password)
    app.bus.add(ctx.feed)
    scene = None
    stop = threading.Event()
    thread = None
    if loop:
        scene = LiveScene(SyntheticScene(seed=5, noise=3.0, drift=0.0))
        live = scene
        thread = threading.Thread(
            target=lambda: app.run(source_factory=lambda: live, should_stop=stop.is_set),
            daemon=True,
        )
        thread.start()
    try:
        with TestClient(build_app(ctx), base_url="http://127.0.0.1:8080") as client:
            yield Web(app, ctx, client, scene)
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        app.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    """The API with a password, no live loop."""
    yield from _web(tmp_path, password=PASSWORD_HASH, loop=False)


@pytest.fixture
def live_web(tmp_path: Path) -> Iterator[Web]:
    """The API with a password and the live loop running on a synthetic scene."""
    yield from _web(tmp_path, password=PASSWORD_HASH, loop=True)


@pytest.fixture
def open_web(tmp_path: Path) -> Iterator[Web]:
    """The API without a password (bound to localhost)."""
    yield from _web(tmp_path, password=None, loop=False)
