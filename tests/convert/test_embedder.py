"""device.embedder.Embedder: same numbers as the converter's interpreter, clear errors on bad bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from convert.calibration import balanced_selection, load_images
from device.bundle import Quantization, read_bundle_meta, sha256_file, write_bundle_meta
from device.embedder import Embedder
from device.errors import BundleError, ModelError
from device.preprocess import prepare, resize_rgb

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


@pytest.fixture(scope="module")
def images(fixture_dir: Path) -> list[np.ndarray]:
    return load_images(balanced_selection(fixture_dir / "test", 16)).images


def test_embeddings_equal_the_converter_interpreter(
    tiny_bundle_dir: Path, images: list[np.ndarray]
) -> None:
    import tensorflow as tf  # the convert side's own interpreter, not the device's loader

    meta = read_bundle_meta(tiny_bundle_dir)
    interpreter = tf.lite.Interpreter(model_path=str(tiny_bundle_dir / "model.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    expected = []
    for image in images:
        interpreter.set_tensor(inp["index"], prepare(image, meta.input))
        interpreter.invoke()
        vec = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        expected.append(vec / np.linalg.norm(vec))

    with Embedder(tiny_bundle_dir, num_threads=1) as embedder:
        assert embedder.dim == 32 and embedder.model_id == meta.model_id
        got = embedder.embed_many(images)
        single = embedder.embed(images[0])
        pixels = embedder.embed_pixels(resize_rgb(images[0], meta.input))
    assert got.shape == (len(images), 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, np.array(expected), atol=1e-5)
    # the shared tiny run must not be degenerate (every image the same vector)
    pairwise = (got @ got.T)[np.triu_indices(len(images), 1)]
    assert pairwise.mean() < 0.9
    np.testing.assert_array_equal(single, got[0])
    np.testing.assert_array_equal(pixels, got[0])


def test_lifetime(micro_bundles: dict[str, Path], images: list[np.ndarray]) -> None:
    embedder = Embedder(micro_bundles["int8"], num_threads=2)
    assert embedder.num_threads == 2 and embedder.runtime == "ai_edge_litert"
    assert embedder.embed_many([]).shape == (0, 16)
    with embedder:
        embedder.embed(images[0])
    assert embedder.closed
    embedder.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        embedder.embed(images[0])


def test_embed_pixels_checks_shape(micro_bundles: dict[str, Path]) -> None:
    with (
        Embedder(micro_bundles["int8"]) as embedder,
        pytest.raises(ValueError, match="use embed"),
    ):
        embedder.embed_pixels(np.zeros((10, 10, 3), np.uint8))


def test_integer_output_is_dequantised(
    micro_run_dir: Path, micro_bundles: dict[str, Path], images: list[np.ndarray], tmp_path: Path
) -> None:
    """A bundle with an int8 embedding output: the Embedder dequantises and re-normalises."""
    import tensorflow as tf

    from convert.calibration import model_inputs, representative_dataset
    from convert.export import export_saved_model
    from convert.source import load_extractor

    meta = read_bundle_meta(micro_bundles["int8"])
    float_spec = meta.input.__class__(height=48, width=48, dtype="float32")
    saved = export_saved_model(load_extractor(micro_run_dir), tmp_path / "sm", float_spec)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(model_inputs(images, float_spec))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.tflite").write_bytes(converter.convert())
    interpreter = tf.lite.Interpreter(model_path=str(bundle / "model.tflite"))
    scale, zero_point = interpreter.get_output_details()[0]["quantization"]
    output = meta.output.__class__(
        embedding_dim=16, dtype="int8", quantization=Quantization(float(scale), int(zero_point))
    )
    write_bundle_meta(
        bundle,
        meta.__class__(
            **{**meta.__dict__, "output": output, "model_id": sha256_file(bundle / "model.tflite")}
        ),
    )
    with Embedder(bundle) as quantised, Embedder(micro_bundles["float32"]) as reference:
        got, ref = quantised.embed_many(images), reference.embed_many(images)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.mean(np.sum(got * ref, axis=1)) > 0.98


# --- broken bundles ------------------------------------------------------------------------------


@pytest.fixture
def bundle_copy(micro_bundles: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(micro_bundles["int8"], tmp_path / "bundle"))


def _edit(bundle: Path, change) -> None:
    path = bundle / "model.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_missing_model_json(bundle_copy: Path) -> None:
    (bundle_copy / "model.json").unlink()
    with pytest.raises(BundleError, match=r"model\.json is missing"):
        Embedder(bundle_copy)


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Embedder(tmp_path / "nowhere")


def test_corrupt_tflite_fails_the_model_id_check(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:20000])
    with pytest.raises(BundleError, match="does not match"):
        Embedder(bundle_copy)


def test_corrupt_tflite_with_matching_id_fails_to_load(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    model.write_bytes(b"\x00" * 4096)
    _edit(bundle_copy, lambda d: d.update(model_id=sha256_file(model)))
    with pytest.raises(BundleError, match="corrupt or truncated"):
        Embedder(bundle_copy)


def test_wrong_model_id(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda d: d.update(model_id="0" * 64))
    with pytest.raises(BundleError, match="different conversions"):
        Embedder(bundle_copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["output"].update(embedding_dim=17), "embedding of 17 values"),
        (lambda d: d["input"].update(height=96, width=96), "input shape is"),
        (lambda d: d["input"].update(dtype="float32", quantization=None), "input dtype is uint8"),
        (lambda d: d["input"].update(quantization={"scale": 0.5, "zero_point": 0}), "quantisation"),
        (
            lambda d: d["output"].update(
                dtype="int8", quantization={"scale": 0.01, "zero_point": 0}
            ),
            "output dtype is float32",
        ),
    ],
)
def test_model_json_disagreeing_with_tflite(bundle_copy: Path, change, message: str) -> None:
    _edit(bundle_copy, change)
    with pytest.raises(BundleError, match=message) as info:
        Embedder(bundle_copy)
    assert "python -m convert" in str(info.value)
