"""The one place the device opens a TFLite interpreter.

Tries, in order, LiteRT (`ai_edge_litert`, the maintained runtime and the fastest), the legacy
`tflite_runtime`, then `tensorflow.lite` (a desktop with TensorFlow installed). Each is imported
inside the function so `import device` never pulls a heavy library in. When none imports, the error
names the package to install for this Python and platform.
"""

from __future__ import annotations

import importlib
import logging
import platform
import sys
from pathlib import Path
from typing import Any

from .errors import BundleError, RuntimeMissingError

log = logging.getLogger(__name__)

# (name reported by runtime_name(), module to import, attribute path to the Interpreter class).
# TensorFlow: `tensorflow.lite` in sys.modules can be TF's internal package rather than the public
# API module, so the class is reached as the attribute `tf.lite.Interpreter`.
_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow", "tensorflow", "lite.Interpreter"),
)


def _import_interpreter_class() -> tuple[str, Any]:
    """Return (runtime name, Interpreter class) of the first runtime that imports.

    Not cached: after the first success the import is a sys.modules lookup."""
    failures: list[str] = []
    for name, module_name, attribute in _CANDIDATES:
        try:
            interpreter_cls: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                interpreter_cls = getattr(interpreter_cls, part)
        except (ImportError, AttributeError) as exc:
            # AttributeError: a broken or stub install; treat it like a missing one.
            failures.append(f"{module_name}: {exc}")
            continue
        log.debug("TFLite runtime: %s", module_name)
        return name, interpreter_cls
    log.debug("no TFLite runtime imports: %s", "; ".join(failures))
    raise RuntimeMissingError(install_hint())


def install_hint() -> str:
    """What to install to get an interpreter on this Python/platform."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = platform.machine() or "this machine"
    hint = (
        f"no TFLite runtime is installed for Python {py} on {machine}: run "
        "`pip install ai-edge-litert` (LiteRT, the supported runtime; on a Raspberry Pi run "
        "systemd/install.sh again instead: it pins the runtime to apt's numpy, which picamera2 "
        "needs)"
    )
    if sys.version_info < (3, 12):
        hint += "; `pip install tflite-runtime` (needs numpy<2) also works on this Python"
    else:
        hint += "; tflite-runtime has no wheels for Python 3.12+, use ai-edge-litert"
    return hint


def runtime_name() -> str:
    """Which runtime `load_interpreter` uses: 'ai_edge_litert', 'tflite_runtime' or 'tensorflow'.

    Raises RuntimeMissingError when none is installed."""
    return _import_interpreter_class()[0]


def load_interpreter(model_path: str | Path, num_threads: int = 2) -> Any:
    """Open a .tflite file and allocate its tensors.

    Returns an object with the tf.lite Interpreter API. Raises RuntimeMissingError when no runtime
    is installed, BundleError when the file is missing or not a valid TFLite model, ValueError for a
    bad `num_threads`.
    """
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    path = Path(model_path)
    if not path.is_file():
        raise BundleError(f"model file {path} does not exist; re-run `python -m convert`")
    _, interpreter_cls = _import_interpreter_class()
    try:
        interpreter = interpreter_cls(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{path} is not a loadable TFLite model ({exc}); the file is corrupt or truncated: "
            "copy the bundle again or re-run `python -m convert`"
        ) from exc
    return interpreter
