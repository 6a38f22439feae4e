"""The device with real int8 bundles.

Recognition needs a real trained model: the committed default bundle (tests/conftest.py
`default_bundle_dir`, MobileNetV2 1.0 ArcFace, 160 px) recognises enrolled products through the
recognition crop path and reports an unenrolled one unknown, at its own calibrated threshold. A
model change, from the tiny bundle (`tiny_bundle_dir`, a near-random from-scratch network) to the
default one, re-embeds every stored view. Mechanics that only need a loadable bundle (the CLI
loading it, enrollment by the CLI in another process while the loop runs) use the tiny bundle."""

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

from device.embedder import Embedder
from device.gallery import Gallery
from device.service import Service
from device.synthetic import Placement, SyntheticScene, SyntheticSource

from .conftest import FIXTURE, make_config, scene_source
from .test_service import GatedSource

ROOT = Path(__file__).resolve().parents[2]
UNENROLLED = "Red-Bell-Pepper"


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path) -> Path:
    return tiny_bundle_dir


@pytest.fixture(scope="module")
def embedder(default_bundle_dir: Path):
    with Embedder(default_bundle_dir, num_threads=1) as emb:
        yield emb


def _run_scene(cfg, gallery: Gallery, embedder, source) -> list[dict]:
    service = Service(
        cfg, source_factory=lambda: source, embedder=embedder, gallery=gallery, out=io.StringIO()
    )
    return list(service.run().events)


def test_recognises_enrolled_products_and_rejects_an_unknown(
    tmp_path: Path, photos, enroll_crops, embedder
) -> None:
    # Enrolled from scene crops (what guided enrollment stores), recognised in another scene
    # (other positions and sizes, noise, lighting drift), at the bundle's calibrated threshold.
    # Measured with the default bundle on these scenes: genuine 0.88-0.97, best impostor 0.36, and
    # the unenrolled product's best score 0.14.
    threshold = embedder.meta.threshold
    assert threshold is not None, "the default bundle has no calibrated threshold"
    cfg = make_config(tmp_path, matcher={"ambiguity_margin": 0.0, "threshold": threshold})
    with Gallery(cfg.gallery.path) as g:
        for label, crop in enroll_crops:
            if label != UNENROLLED:
                g.add_product(label, [(embedder.embed(crop), crop)], embedder.embedding_id)
        source = scene_source(photos, seed=11)
        events = _run_scene(cfg, g, embedder, source)
    truth = [p.label for p in source.placements]
    assert UNENROLLED in truth and len(set(truth)) == len(photos)
    assert len(events) == len(truth)
    for event, label in zip(events, truth, strict=True):
        if label == UNENROLLED:
            assert event["status"] == "unknown", (event, threshold)
        else:
            assert event["best"] == label and event["status"] == "known", (event, threshold)


@pytest.mark.slow  # builds the tiny bundle: a training and a conversion
def test_model_change_reembeds_every_view(
    tmp_path: Path, photos, enroll_crops, embedder, bundle: Path
) -> None:
    # Enrolled with the tiny bundle, then the device starts with the default one: every stored
    # view is re-embedded from its stored crop, and recognition works with the new model.
    db = tmp_path / "g.db"
    enrolled = enroll_crops[:3]
    with Embedder(bundle, num_threads=1) as old, Gallery(db) as g:
        assert old.model_id != embedder.model_id
        for label, crop in enrolled:
            g.add_product(label, [(old.embed(crop), crop)], old.embedding_id)
        assert g.stale_views(embedder.embedding_id) == 3
    cfg = make_config(
        tmp_path,
        gallery={"path": str(db)},
        matcher={"ambiguity_margin": 0.0, "threshold": embedder.meta.threshold},
    )
    with Gallery(db) as g:
        source = scene_source(photos[:3], seed=11)
        service = Service(
            cfg, source_factory=lambda: source, embedder=embedder, gallery=g, out=io.StringIO()
        )
        assert g.stale_views(embedder.embedding_id) == 0
        assert len(service.recognizer.matcher) == 3
        assert service.recognizer.matcher.dim == embedder.dim
        stored, names = g.load(embedder.embedding_id)
        events = service.run().events
    assert names == [label for label, _ in enrolled]
    direct = embedder.embed_many([crop for _, crop in enrolled])
    assert np.all(np.sum(stored * direct, axis=1) > 0.95)  # re-embedded from the stored JPEGs
    truth = [p.label for p in source.placements]
    assert len(events) == len(truth) == 3
    assert [(e["best"], e["status"]) for e in events] == [(label, "known") for label in truth]
    assert all(e["model_id"] == embedder.model_id for e in events)


@pytest.mark.slow  # builds the tiny bundle: a training and a conversion
def test_cli_with_the_bundle_and_two_processes(
    tmp_path: Path, photos, enroll_crops, bundle
) -> None:
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
