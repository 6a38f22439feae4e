"""device.runtime: one loader, three runtimes, each tested as if it were the only one installed."""

from __future__ import annotations

import sys
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from device import runtime
from device.embedder import Embedder
from device.errors import BundleError, RuntimeMissingError

LITERT = ("ai_edge_litert", "ai_edge_litert.interpreter")
TFLITE_RUNTIME = ("tflite_runtime", "tflite_runtime.interpreter")
TENSORFLOW = ("tensorflow", "tensorflow.lite")

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def _uninstall(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    # A None entry in sys.modules makes `import name` raise ImportError, as if not installed.
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def model_path(micro_bundles: dict[str, Path]) -> Path:
    return micro_bundles["float32"] / "model.tflite"


def _run(interpreter, seed: int = 0) -> np.ndarray:
    detail = interpreter.get_input_details()[0]
    x = np.random.default_rng(seed).uniform(0, 255, size=detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def test_prefers_litert(model_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    assert runtime.runtime_name() == "ai_edge_litert"
    interpreter = runtime.load_interpreter(model_path, num_threads=1)
    assert isinstance(interpreter, Interpreter)
    assert _run(interpreter).shape == (1, 16)


def test_tflite_runtime_only(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter as Real

    reference = _run(runtime.load_interpreter(model_path))
    created: list[dict] = []

    class FakeTfliteInterpreter(Real):  # the tflite_runtime API, backed by the real interpreter
        def __init__(self, model_path: str, num_threads: int) -> None:
            created.append({"model_path": model_path, "num_threads": num_threads})
            super().__init__(model_path=model_path, num_threads=num_threads)

    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType("tflite_runtime.interpreter")
    module.Interpreter = FakeTfliteInterpreter
    package.interpreter = module
    _uninstall(monkeypatch, *LITERT, *TENSORFLOW)
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", module)

    assert runtime.runtime_name() == "tflite_runtime"
    interpreter = runtime.load_interpreter(model_path, num_threads=3)
    assert isinstance(interpreter, FakeTfliteInterpreter)
    assert created == [{"model_path": str(model_path), "num_threads": 3}]
    np.testing.assert_allclose(_run(interpreter), reference, atol=1e-6)


def test_tensorflow_only(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    import tensorflow as tf

    reference = _run(runtime.load_interpreter(model_path))
    _uninstall(monkeypatch, *LITERT, *TFLITE_RUNTIME)
    assert runtime.runtime_name() == "tensorflow"
    interpreter = runtime.load_interpreter(model_path, num_threads=1)
    assert isinstance(interpreter, tf.lite.Interpreter)
    np.testing.assert_allclose(_run(interpreter), reference, atol=1e-5)


def test_no_runtime_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, model_path: Path, micro_bundles: dict[str, Path]
) -> None:
    _uninstall(monkeypatch, *LITERT, *TFLITE_RUNTIME, *TENSORFLOW)
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        runtime.load_interpreter(model_path)
    with pytest.raises(RuntimeMissingError, match="pip install ai-edge-litert"):
        Embedder(micro_bundles["int8"])


def test_install_hint_depends_on_python(monkeypatch: pytest.MonkeyPatch) -> None:
    version = namedtuple("version", "major minor micro releaselevel serial")
    monkeypatch.setattr(sys, "version_info", version(3, 11, 2, "final", 0))
    assert "tflite-runtime` (needs numpy<2) also works" in runtime.install_hint()
    monkeypatch.setattr(sys, "version_info", version(3, 12, 1, "final", 0))
    hint = runtime.install_hint()
    assert "Python 3.12" in hint and "no wheels for Python 3.12+" in hint


def test_bad_files_and_arguments(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        runtime.load_interpreter(tmp_path / "none.tflite")
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(BundleError, match="corrupt or truncated"):
        runtime.load_interpreter(truncated)
    with pytest.raises(ValueError, match="num_threads"):
        runtime.load_interpreter(model_path, num_threads=0)


def test_environment_picks_one_runtime(monkeypatch: pytest.MonkeyPatch, model_path: Path) -> None:
    import tensorflow as tf

    monkeypatch.setenv(runtime.RUNTIME_ENV, "auto")
    assert runtime.runtime_name() == "ai_edge_litert"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tensorflow")  # although LiteRT is installed
    assert runtime.runtime_name() == "tensorflow"
    assert isinstance(runtime.load_interpreter(model_path, num_threads=1), tf.lite.Interpreter)

    _uninstall(monkeypatch, *TFLITE_RUNTIME)
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tflite_runtime")  # asked for, not installed
    with pytest.raises(RuntimeMissingError, match="pip install tflite-runtime`, or unset"):
        runtime.load_interpreter(model_path)
    monkeypatch.setenv(runtime.RUNTIME_ENV, "ai-edge-litert")  # the pip name works too
    assert runtime.runtime_name() == "ai_edge_litert"
    monkeypatch.setenv(runtime.RUNTIME_ENV, "tflite")
    with pytest.raises(RuntimeMissingError, match="auto, ai_edge_litert, tflite_runtime, tensorf"):
        runtime.runtime_name()
