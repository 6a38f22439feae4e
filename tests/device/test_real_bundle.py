"""The device with the real tiny int8 bundle (tests/conftest.py `tiny_bundle_dir`): enrollment
through the recognition crop path, recognition of enrolled products and an unenrolled one reported
unknown, the CLI loading the bundle, a model change re-embedding stored views, and enrollment by
the CLI in another process while the loop runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.gallery import Gallery
from device.service import Service
from device.synthetic import Placement, SyntheticScene, SyntheticSource

from .conftest import FIXTURE, make_config, scene_source
from .fakes import FakeEmbedder
from .test_service import GatedSource

ROOT = Path(__file__).resolve().parents[2]
UNENROLLED = "Red-Bell-Pepper"


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest) -> Path:
    # PRODREC_TEST_BUNDLE=DIR uses an existing bundle instead of building the tiny one (~1-2 min).
    if os.environ.get("PRODREC_TEST_BUNDLE"):
        return Path(os.environ["PRODREC_TEST_BUNDLE"])
    try:
        return Path(request.getfixturevalue("tiny_bundle_dir"))
    except (ImportError, pytest.FixtureLookupError) as exc:  # training/convert not available
        pytest.skip(f"the tiny bundle cannot be built here: {exc}")


@pytest.fixture(scope="module")
def embedder(bundle: Path):
    from device.embedder import Embedder

    with Embedder(bundle, num_threads=1) as emb:
        yield emb


def test_recognises_enrolled_products_and_rejects_an_unknown(
    tmp_path: Path, photos, enroll_crops, embedder
) -> None:
    # Enrolled from scene crops (what guided enrollment stores), recognised in another scene
    # (other positions and sizes, noise, lighting drift).
    vecs = embedder.embed_many([c for _, c in enroll_crops])
    off_diagonal = (vecs @ vecs.T)[~np.eye(len(vecs), dtype=bool)]
    if off_diagonal.min() > 0.999:
        pytest.skip(
            "the tiny fixture bundle maps every product to the same embedding (all cosines > 0.999): "
            "recognition cannot be tested with it; the fake-embedder tests cover the loop"
        )
    threshold = embedder.meta.threshold
    cfg = make_config(tmp_path, matcher={"ambiguity_margin": 0.0, "threshold": threshold})
    with Gallery(cfg.gallery.path) as g:
        for label, crop in enroll_crops:
            if label != UNENROLLED:
                g.add_product(label, [(embedder.embed(crop), crop)], embedder.model_id)
        source = scene_source(photos, seed=11)
        service = Service(
            cfg, source_factory=lambda: source, embedder=embedder, gallery=g, out=io.StringIO()
        )
        events = service.run().events
    truth = [p.label for p in source.placements]
    assert len(events) == len(truth)
    for event, label in zip(events, truth, strict=True):
        if label == UNENROLLED:
            assert event["status"] == "unknown", (event, threshold)
        else:
            assert event["best"] == label and event["status"] == "known", (event, threshold)


def test_model_change_reembeds_every_view(tmp_path: Path, photos, embedder) -> None:
    old = FakeEmbedder("a" * 64)
    db = tmp_path / "g.db"
    with Gallery(db) as g:
        for label, image in photos[:3]:
            g.add_product(label, [(old.embed(image), image)], old.model_id)
    cfg = make_config(tmp_path, gallery={"path": str(db)})
    with Gallery(db) as g:
        service = Service(
            cfg,
            source_factory=lambda: scene_source(photos[:1]),
            embedder=embedder,
            gallery=g,
            out=io.StringIO(),
        )
        assert g.stale_views(embedder.model_id) == 0
        assert (
            len(service.recognizer.matcher) == 3 and service.recognizer.matcher.dim == embedder.dim
        )
        stored = g.load(embedder.model_id)[0]
    direct = embedder.embed_many([im for _, im in photos[:3]])
    assert np.all(np.sum(stored * direct, axis=1) > 0.95)  # from the stored JPEG crops


def test_cli_with_the_bundle_and_two_processes(
    tmp_path: Path, photos, enroll_crops, bundle
) -> None:
    from device.embedder import Embedder

    db = tmp_path / "g.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "device"]
    opts = ["--model", str(bundle), "--db", str(db), "--log-level", "WARNING"]
    # `run` over a synthetic scene with the real model: one JSON event per placement, exit 0.
    scene_dir = tmp_path / "two"
    for label in ("Banana", "Oatly-Oat-Milk"):
        (scene_dir / label).mkdir(parents=True)
        src = sorted((FIXTURE / "test" / label).glob("*.jpg"))[0]
        (scene_dir / label / src.name).write_bytes(src.read_bytes())
    proc = subprocess.run(
        [*base, "run", *opts, "--threshold", "0.5", "--source", f"synthetic:{scene_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) == 2 and all(
        e["model_id"] == json.loads((bundle / "model.json").read_text())["model_id"] for e in events
    )

    # Enrollment by the CLI in another process while the loop runs here: seen without a restart.
    label, image = photos[4]
    (tmp_path / "new" / label).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "new" / label / "view.png"), enroll_crops[4][1])
    first = Placement(label, image, (100, 100, 200, 200), 20, 40)
    second = Placement(label, image, (300, 150, 210, 210), 60, 80)
    inner = SyntheticSource(SyntheticScene(seed=7, noise=3.0), [first, second], 90)
    gate = threading.Event()
    cfg = make_config(
        tmp_path, gallery={"path": str(db), "reload_every_s": 3600}, matcher={"threshold": 0.5}
    )
    with Embedder(bundle, num_threads=1) as emb, Gallery(db) as g:
        service = Service(
            cfg,
            source_factory=lambda: GatedSource(inner, 50, gate),
            embedder=emb,
            gallery=g,
            out=io.StringIO(),
        )
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(stats=service.run()))
        thread.start()
        try:
            proc = subprocess.run(
                [*base, "enroll", *opts, "--from-images", str(tmp_path / "new")],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
        finally:
            gate.set()
            thread.join(60)
    events = result["stats"].events
    assert events[0]["best"] is None and events[0]["status"] == "unknown"  # nothing enrolled yet
    assert events[1]["best"] == label  # the only product: enrolled meanwhile by the other process
