"""The one place the device opens a TFLite interpreter.

Tries, in order, LiteRT (`ai_edge_litert`, the maintained runtime and the fastest), the legacy
`tflite_runtime`, then `tensorflow.lite` (a desktop with TensorFlow installed). Each is imported
inside the function so `import device` never pulls a heavy library in. When none imports, the error
names the package to install for this Python and platform.

`PRODREC_TFLITE_RUNTIME=ai_edge_litert|tflite_runtime|tensorflow` in the environment uses that one
runtime only (to compare runtimes on one machine, e.g. with bench/device_speed.py, or to avoid one
that misbehaves on a board); unset or `auto`, the order above.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .errors import BundleError, RuntimeMissingError

logger = logging.getLogger(__name__)

# (name reported by runtime_name(), module to import, attribute path to the Interpreter class).
# TensorFlow: `tensorflow.lite` in sys.modules can be TF's internal package rather than the public
# API module, so the class is reached as the attribute `tf.lite.Interpreter`.
_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow", "tensorflow", "lite.Interpreter"),
)


RUNTIME_ENV = "PRODREC_TFLITE_RUNTIME"


def _candidates() -> tuple[tuple[str, str, str], ...]:
    """The runtimes to try, in order: all of them, or the one named by PRODREC_TFLITE_RUNTIME."""
    wanted = os.environ.get(RUNTIME_ENV, "").strip()
    if wanted in ("", "auto"):
        return _CANDIDATES
    # The pip names (ai-edge-litert, tflite-runtime) are accepted as well as the module names.
    chosen = tuple(c for c in _CANDIDATES if c[0] == wanted.replace("-", "_"))
    if not chosen:
        names = ", ".join(c[0] for c in _CANDIDATES)
        raise RuntimeMissingError(
            f"{RUNTIME_ENV}={wanted!r} is not a TFLite runtime: set it to auto, {names}, or unset it"
        )
    return chosen


def _import_interpreter_class() -> tuple[str, Any]:
    """Return (runtime name, Interpreter class) of the first runtime that imports.

    Not cached: after the first success the import is a sys.modules lookup."""
    failures: list[str] = []
    candidates = _candidates()
    for name, module_name, attribute in candidates:
        try:
            interpreter_cls: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                interpreter_cls = getattr(interpreter_cls, part)
        except (ImportError, AttributeError) as exc:
            # AttributeError: a broken or stub install; treat it like a missing one.
            failures.append(f"{module_name}: {exc}")
            continue
        logger.debug("TFLite runtime: %s", module_name)
        return name, interpreter_cls
    logger.debug("no TFLite runtime imports: %s", "; ".join(failures))
    if len(candidates) == 1:
        package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(
            candidates[0][0], candidates[0][0]
        )
        raise RuntimeMissingError(
            f"{RUNTIME_ENV}={candidates[0][0]} but it does not import ({failures[0]}): "
            f"`pip install {package}`, or unset {RUNTIME_ENV} to use whichever runtime is installed"
        )
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
