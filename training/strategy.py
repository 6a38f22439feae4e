"""`--strategy`: tf.distribute for bigger machines.

- default: one device.
- mirrored: MirroredStrategy over all GPUs (or all logical CPU devices when there is no GPU and
  more than one was configured, which is how the tests run it).
- multiworker: MultiWorkerMirroredStrategy across hosts, configured by the TF_CONFIG environment
  variable (each host runs the same command with its own task index).

The batch size given is PER REPLICA: global batch = batch size x replicas, and the learning rates
are scaled linearly by the number of replicas (Goyal et al., 2017), so one replica trains exactly as
without a strategy.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def split_cpu(n: int) -> None:
    """Expose the CPU as `n` logical devices (must run before TensorFlow initialises devices)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def make_strategy(name: str) -> Any:
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(cpus) < 2:
            logger.warning("mirrored strategy: no GPU and a single CPU device, so one replica")
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            logger.warning("multiworker strategy without TF_CONFIG: running as a single worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}: choose default, mirrored or multiworker")


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker (only the chief writes)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        task = json.loads(raw).get("task", {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    cluster = json.loads(raw).get("cluster", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
