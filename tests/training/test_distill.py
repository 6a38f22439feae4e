"""`fit --distill`: the distance against a naive numpy reference; the teacher stays frozen while the
student trains; literal tiny fits from a trained run: with --distill the features stay nearer the
starting ones, and the run written is an ordinary one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="fit --distill trains a model: needs TensorFlow")

import keras

from tests.training.helpers import start_config
from training.config import FitConfig
from training.distill import FeatureDistillation, unit_sq_distance


def naive_unit_sq_distance(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = []
    for a, b in zip(s, t, strict=True):
        a = a / np.sqrt(np.sum(a * a))
        b = b / np.sqrt(np.sum(b * b))
        out.append(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
    return np.array(out)


def test_distance_matches_naive_numpy_including_the_boundaries() -> None:
    rng = np.random.default_rng(0)
    s = rng.random((5, 7)).astype(np.float32)
    t = rng.random((5, 7)).astype(np.float32)
    s[1] = t[1] * 3.0  # same direction: 0
    s[2], t[2] = np.eye(7)[0], np.eye(7)[1]  # orthogonal unit vectors: 2
    s[3], t[3] = np.eye(7)[0], -np.eye(7)[0]  # opposite: 4
    got = keras.ops.convert_to_numpy(unit_sq_distance(s, t))
    want = naive_unit_sq_distance(s.astype(np.float64), t.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got[1:4], [0.0, 2.0, 4.0], atol=1e-5)


def test_layer_adds_the_weighted_mean_and_passes_logits_through() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    s = rng.random((4, 6)).astype(np.float32)
    t = rng.random((4, 6)).astype(np.float32)
    layer = FeatureDistillation(2.5)
    out = layer([logits, s, t])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), logits)
    (loss,) = layer.losses
    want = 2.5 * naive_unit_sq_distance(s.astype(np.float64), t.astype(np.float64)).mean()
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_bad_weights_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1000\\]"):
        FitConfig(distill=-1.0)
    with pytest.raises(ValueError, match="pretrained"):
        FitConfig(distill=1.0, weights=None)
    with pytest.raises(ValueError, match="> 0"):
        FeatureDistillation(0.0)
    with pytest.raises(ValueError, match="--unfreeze"):
        FitConfig(distill=1.0, unfreeze=())
    with pytest.raises(ValueError, match="--frozen-epochs"):
        FitConfig(distill=1.0, epochs=3, frozen_epochs=3)


def test_a_training_step_moves_the_student_and_not_the_teacher() -> None:
    from training.distill import TEACHER_NAME, build_distill_trainer
    from training.model import build_extractor, build_training_model, set_backbone_trainable

    keras.utils.set_random_seed(0)
    extractor = build_extractor(input_size=32, alpha=0.35, embedding_dim=8, weights=None)
    model = build_training_model(extractor, "softmax", 3)
    trainer = build_distill_trainer(model, extractor, 1.0)
    set_backbone_trainable(extractor, 1.0, freeze_bn=True)
    teacher = trainer.get_layer(TEACHER_NAME)
    student = extractor.get_layer("backbone")
    t0, s0 = teacher.get_weights(), student.get_weights()
    np.testing.assert_array_equal(t0[0], s0[0])  # the teacher starts as a copy
    trainer.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    trainer.fit(x, rng.integers(0, 3, 8), epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(t0, teacher.get_weights(), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(s0, student.get_weights(), strict=True))


def pooled_features(extractor: keras.Model, images: np.ndarray) -> np.ndarray:
    taps = keras.Model(extractor.inputs, extractor.get_layer("pool").output)
    return np.asarray(taps.predict(images, verbose=0), dtype=np.float64)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def test_distill_keeps_the_features_nearer_the_starting_backbone(
    tiny_run_dir: Path, fixture_dir: Path, plain_start_fit: Path, tmp_path: Path
) -> None:
    """Two literal fits from the same trained run, same seed, a high fine-tuning rate so the
    backbone moves (the plain one shared with the L2-SP test): with --distill the pooled features
    end nearer the starting ones."""
    from training.data import decode_items, scan_dataset
    from training.fit import fit
    from training.model import load_extractor

    dataset = scan_dataset(fixture_dir / "train", None, val_split=0.25, seed=0)
    images = decode_items(dataset.train, 96, what="decoding", progress=False)[0].images
    x = images.astype(np.float32)
    start = pooled_features(load_extractor(tiny_run_dir), x)
    run = tmp_path / "run"
    result = fit(
        fixture_dir / "train", run, start_config(tiny_run_dir).with_(distill=200.0), progress=False
    )
    assert result.config["training"]["distill"] == 200.0
    # Neither the teacher nor the distillation layer is written: model.keras is the plain
    # extractor + head; the log has the distance beside the loss.
    trained = keras.saving.load_model(run / "model.keras", compile=False)
    names = {layer.name for layer in trained.layers}
    assert not names & {"distill_teacher", "feature_distillation"}, names
    assert all(row.get("distill_distance", -1.0) >= 0.0 for row in result.history)
    cos = {
        weight: mean_cosine(pooled_features(load_extractor(r), x), start)
        for weight, r in ((0.0, plain_start_fit), (200.0, run))
    }
    assert cos[0.0] < 0.999, f"the backbone hardly moved without --distill ({cos}): no test"
    # Measured 0.73 against 0.56 after the same one epoch.
    assert cos[200.0] > cos[0.0] + 0.1, cos
