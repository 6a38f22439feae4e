"""Single-image latency of a .tflite with the device's runtime loader (LiteRT when installed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.runtime import load_interpreter, runtime_name

log = logging.getLogger(__name__)

DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5


def measure_latency(
    model_path: str | Path,
    threads: Sequence[int] = (1, 2),
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
) -> dict[str, Any]:
    """Median and 90th-percentile milliseconds per invoke (batch 1) for each thread count."""
    if runs < 1:
        raise ValueError(f"latency runs must be at least 1, got {runs}")
    result: dict[str, Any] = {"runtime": runtime_name(), "runs": runs, "warmup": warmup}
    for n in threads:
        interpreter = load_interpreter(model_path, num_threads=n)
        detail = interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=tuple(detail["shape"])).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], x)
        for _ in range(warmup):
            interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000.0)
        result[f"threads_{n}"] = {
            "median_ms": round(float(np.median(times)), 3),
            "p90_ms": round(float(np.percentile(times, 90)), 3),
        }
        log.info("latency, %d thread(s): median %.2f ms", n, float(np.median(times)))
        del interpreter
    return result
