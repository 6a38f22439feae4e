"""The extractor: one image input, unit embeddings, labels only ever reach the loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.config import FitConfig, stage_plan  # noqa: E402
from training.heads import make_loss  # noqa: E402
from training.model import (  # noqa: E402
    build_extractor,
    build_training_model,
    get_backbone,
    load_extractor,
    recalibrate_batchnorm,
    set_backbone_trainable,
)

TINY = {"input_size": 96, "alpha": 0.35, "embedding_dim": 16, "weights": None}


@pytest.fixture(scope="module")
def extractor() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_extractor(**TINY)


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, 96, 96, 3)).astype(np.float32)


def test_extractor_has_one_image_input_and_unit_outputs(extractor: keras.Model) -> None:
    assert extractor.name == "extractor"
    assert len(extractor.inputs) == 1
    assert tuple(extractor.inputs[0].shape) == (None, 96, 96, 3)
    assert extractor.inputs[0].dtype == "float32"
    emb = extractor(_images(), training=False).numpy()
    assert emb.shape == (4, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("head", ["arcface", "softmax"])
def test_embedding_does_not_depend_on_the_label(extractor: keras.Model, head: str) -> None:
    model = build_training_model(extractor, head, num_classes=3)
    assert len(model.inputs) == 1  # the label is never a model input
    loss = make_loss(head, 64.0 if head != "softmax" else None, 0.5)
    x = _images()
    labels_a = np.array([0, 1, 2, 0])
    labels_b = np.array([2, 2, 1, 1])
    # The same forward pass serves any labels: the outputs are identical, only the loss differs.
    out = model(x, training=False)
    emb = extractor(x, training=False).numpy()
    loss_a = float(loss(labels_a, out))
    loss_b = float(loss(labels_b, out))
    np.testing.assert_array_equal(model(x, training=False).numpy(), out.numpy())
    np.testing.assert_array_equal(extractor(x, training=False).numpy(), emb)
    assert loss_a != pytest.approx(loss_b)


def test_saved_extractor_reloads_with_one_input_and_same_embeddings(
    extractor: keras.Model, tmp_path: Path
) -> None:
    path = tmp_path / "extractor.keras"
    extractor.save(path)
    for src in (path, tmp_path):  # the file, or the RUN_DIR holding it
        loaded = load_extractor(src)
        assert len(loaded.inputs) == 1 and len(loaded.outputs) == 1
        x = _images(seed=3)
        np.testing.assert_allclose(
            loaded(x, training=False).numpy(), extractor(x, training=False).numpy(), atol=1e-6
        )


def test_load_extractor_missing_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RUN_DIR"):
        load_extractor(tmp_path)


def test_unfreezing_goes_from_the_top_and_keeps_batchnorm_frozen() -> None:
    ext = build_extractor(**TINY)
    counts = [set_backbone_trainable(ext, f) for f in (0.0, 0.25, 0.5, 1.0)]
    assert counts[0] == 0 and counts[0] < counts[1] < counts[2] < counts[3]
    set_backbone_trainable(ext, 0.25)
    backbone = get_backbone(ext)
    trainable = {la.name for la in backbone.layers if la.trainable and la.weights}
    assert "Conv_1" in trainable and "block_16_project" in trainable
    assert "block_1_expand" not in trainable and "Conv1" not in trainable
    assert not any(
        isinstance(la, keras.layers.BatchNormalization) and la.trainable for la in backbone.layers
    )


def test_sizes_without_imagenet_weights_start_from_the_224_px_ones() -> None:
    from training.config import imagenet_weight_size

    assert [imagenet_weight_size(s) for s in (96, 160, 224)] == [96, 160, 224]
    assert imagenet_weight_size(288) == 224 and imagenet_weight_size(100) == 224
    FitConfig(input_size=288, alpha=1.0)  # accepted with weights="imagenet"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 16, "weights": None}, "at least 32"),
        ({"input_size": 96, "alpha": 0.6, "weights": "imagenet"}, "alpha 0.6"),
    ],
)
def test_input_sizes_mobilenet_cannot_take_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_extractor(**{**TINY, **kwargs})
    with pytest.raises(ValueError, match=match):
        FitConfig(**{"alpha": 1.0, **{k: v for k, v in kwargs.items()}})


def test_stage_plan_splits_total_epochs() -> None:
    plan = stage_plan(FitConfig(weights=None, epochs=12, frozen_epochs=3, unfreeze=(0.25, 0.5)))
    assert [(f, n) for f, n, _ in plan] == [(0.0, 3), (0.25, 4), (0.5, 5)]
    assert sum(n for _, n, _ in plan) == 12
    assert plan[0][2] == 1e-3 and plan[1][2] == 1e-4 and plan[2][2] == 5e-5
    assert stage_plan(FitConfig(weights=None, epochs=2, frozen_epochs=3)) == [(0.0, 2, 1e-3)]


def test_bn_recalibration_averages_batch_statistics_like_a_numpy_loop() -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, bn(x))
    bn.trainable = False  # a frozen layer is re-estimated too, then left frozen
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(10, 3)).astype(np.float32)
    info = recalibrate_batchnorm(model, data, batch_size=4)
    feats = np.asarray(model.get_layer("dense")(data))
    batches = [feats[i : i + 4] for i in range(0, 10, 4)]  # 4, 4, 2 images; no dropout
    sizes = np.array([len(b) for b in batches], np.float64)[:, None]
    want_mean = (np.stack([b.mean(0) for b in batches]) * sizes).sum(0) / sizes.sum()
    want_var = (np.stack([b.var(0) for b in batches]) * sizes).sum(0) / sizes.sum()
    np.testing.assert_allclose(np.asarray(bn.moving_mean), want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), want_var, rtol=1e-4, atol=1e-5)
    assert (info["layers"], info["images"], info["batches"]) == (1, 10, 3)
    assert bn.momentum == 0.99 and not bn.trainable
    assert model.get_layer("dropout").rate == 0.5
