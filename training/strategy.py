"""`--strategy`: tf.distribute for bigger machines.

- default: one device.
- mirrored: MirroredStrategy over all GPUs (or all logical CPU devices when there is no GPU and
  more than one was configured, which is how the tests run it).
- multiworker: MultiWorkerMirroredStrategy across hosts, configured by the TF_CONFIG environment
  variable (each host runs the same command with its own task index). Forming the cluster is
  bounded by `--cluster-timeout`: a worker whose peers never come says which address it waited for
  and stops with `ClusterError`; once training runs, every collective operation is bounded by the
  same time, so a worker that dies makes the others stop with an error instead of hanging.

The batch size given is PER REPLICA: global batch = batch size x replicas, and the learning rates
are scaled linearly by the number of replicas (Goyal et al., 2017), so one replica trains exactly as
without a strategy.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# How often a worker waiting for its peers says which of them it still waits for.
_WAIT_LOG_INTERVAL_S = 10.0


class ClusterError(RuntimeError):
    """The multi-worker cluster could not be formed, or lost a worker while training."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in a TF_CONFIG cluster (chief and workers train; nothing else)."""

    tasks: tuple[tuple[str, int, str], ...]  # (type, index, "host:port"), chief first
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return len(self.tasks)

    @property
    def address(self) -> str:
        return next(a for t, i, a in self.tasks if (t, i) == (self.task_type, self.task_index))

    @property
    def peers(self) -> list[tuple[str, int, str]]:
        return [(t, i, a) for t, i, a in self.tasks if (t, i) != (self.task_type, self.task_index)]

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 when there is none: the one that writes RUN_DIR."""
        return (self.task_type, self.task_index) == self.tasks[0][:2]

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def read_cluster(env: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster TF_CONFIG describes, or None without TF_CONFIG. ValueError, saying what to fix,
    for JSON that is not a cluster or a task that is not in it."""
    raw = (os.environ if env is None else env).get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    example = (
        '{"cluster": {"worker": ["host1:23456", "host2:23456"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' object, e.g. {example}")
    cluster, task = cfg["cluster"], cfg.get("task")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(
            f"TF_CONFIG cluster has {', '.join(unsupported)} jobs: multiworker training runs "
            "'chief' and 'worker' tasks only"
        )
    tasks: list[tuple[str, int, str]] = []
    for job in ("chief", "worker"):
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError(f"TF_CONFIG cluster.{job} must be a list of 'host:port' strings")
        for i, address in enumerate(addresses):
            _split_address(address)
            tasks.append((job, i, address))
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG cluster.chief lists more than one address: one chief at most")
    if not tasks:
        raise ValueError(f"TF_CONFIG cluster lists no worker, e.g. {example}")
    dupes = sorted({a for _, _, a in tasks if [x for _, _, x in tasks].count(a) > 1})
    if dupes:
        raise ValueError(f"TF_CONFIG cluster lists {', '.join(dupes)} more than once")
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(f"TF_CONFIG needs a 'task' saying which task this is, e.g. {example}")
    task_type, index = task["type"], task.get("index", 0)
    if not isinstance(index, int) or not any((t, i) == (task_type, index) for t, i, _ in tasks):
        raise ValueError(
            f"TF_CONFIG task {task_type} {index} is not in its cluster "
            f"({', '.join(f'{t} {i}' for t, i, _ in tasks)})"
        )
    return Cluster(tuple(tasks), task_type, index)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"TF_CONFIG address {address!r} is not 'host:port'")
    return host.strip("[]"), int(port)


def split_cpu(n: int) -> None:
    """Expose the CPU as `n` logical devices (must run before TensorFlow initialises devices)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def make_strategy(name: str, *, cluster_timeout: float = 120.0) -> Any:
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(cpus) < 2:
            log.warning("mirrored strategy: no GPU and a single CPU device, so one replica")
        return tf.distribute.MirroredStrategy(devices=cpus)
    if name == "multiworker":
        cluster = read_cluster()
        if cluster is None:
            log.warning("multiworker strategy without TF_CONFIG: running as a single worker")
            return tf.distribute.MultiWorkerMirroredStrategy()
        if cluster.num_workers == 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
        return connect(cluster, cluster_timeout)
    raise ValueError(f"unknown strategy {name!r}: choose default, mirrored or multiworker")


def connect(cluster: Cluster, timeout: float) -> Any:
    """MultiWorkerMirroredStrategy over `cluster`, or ClusterError when the other workers have not
    all answered within `timeout` seconds (naming the addresses that never did).

    Why the wait happens here, before TensorFlow: TensorFlow blocks in C++, holding Python's
    interpreter lock, until every task has registered, and the leader (the first task) waits
    forever whatever the coordination service's register timeout says (SIGTERM does not end it
    either). So each worker first listens on its own port and waits until something answers at
    every peer's address; only then does it start TensorFlow's server on that port. A peer that
    dies in the short time between the two is the one case left to `faulthandler`, which stops
    this worker (with a "Timeout" traceback) when `timeout` is over."""
    import tensorflow as tf

    started = time.monotonic()
    log.info(
        "%s at %s: joining %d workers (%s), waiting up to %.0f s (--cluster-timeout)",
        cluster.name,
        cluster.address,
        cluster.num_workers,
        ", ".join(a for _, _, a in cluster.tasks),
        timeout,
    )
    wait_for_peers(cluster, timeout)
    left = max(1.0, timeout - (time.monotonic() - started))
    log.info(
        "%s: every worker answers; forming the cluster (at most %.0f s more)", cluster.name, left
    )
    faulthandler.dump_traceback_later(left, exit=True)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=timeout
            ),
        )
    except tf.errors.OpError as exc:
        raise ClusterError(
            f"{_join_failure(cluster, timeout, unreachable_peers(cluster))} "
            f"(TensorFlow: {type(exc).__name__}: {tf_error_line(exc)})"
        ) from exc
    finally:
        faulthandler.cancel_dump_traceback_later()
    log.info("%s: all %d workers joined", cluster.name, cluster.num_workers)
    return strategy


def wait_for_peers(cluster: Cluster, timeout: float, poll: float = 0.5) -> None:
    """Listen on this worker's port and wait until every peer's port answers; ClusterError naming
    the silent ones after `timeout` seconds, or when this worker's port is taken."""
    port = _split_address(cluster.address)[1]
    try:
        if socket.has_dualstack_ipv6():
            listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            listener = socket.create_server(("", port))
    except OSError as exc:
        raise ClusterError(
            f"{cluster.name} cannot listen on port {port} ({cluster.address} in TF_CONFIG): "
            f"{exc.strerror or exc}. Another program (or an earlier worker still running) holds "
            "it: stop it, or give this worker another port in every worker's TF_CONFIG"
        ) from exc
    # Probes are never accepted: the kernel completes them, and closing the listener resets them,
    # so nothing lingers on the port TensorFlow binds next.
    started = time.monotonic()
    next_log = started + _WAIT_LOG_INTERVAL_S
    with listener:
        while True:
            silent = unreachable_peers(cluster)
            waited = time.monotonic() - started
            if not silent:
                return
            if waited >= timeout:
                raise ClusterError(_join_failure(cluster, timeout, silent))
            if time.monotonic() >= next_log:
                next_log += _WAIT_LOG_INTERVAL_S
                log.info(
                    "%s: still waiting for %s (%.0f s of %.0f s)",
                    cluster.name,
                    ", ".join(f"{t} {i} at {a}" for t, i, a in silent),
                    waited,
                    timeout,
                )
            time.sleep(poll)


def unreachable_peers(cluster: Cluster, probe_timeout: float = 1.0) -> list[tuple[str, int, str]]:
    """The other tasks nothing answers for at their address (no server listening yet)."""
    silent = []
    for task_type, index, address in cluster.peers:
        try:
            with socket.create_connection(_split_address(address), timeout=probe_timeout):
                pass
        except OSError:
            silent.append((task_type, index, address))
    return silent


def _join_failure(cluster: Cluster, timeout: float, silent: list[tuple[str, int, str]]) -> str:
    me = f"{cluster.name} at {cluster.address}"
    if silent:
        who = ", ".join(f"{t} {i} at {a}" for t, i, a in silent)
        return (
            f"{me} gave up after {timeout:.0f} s (--cluster-timeout) waiting for {who}, which "
            "never answered: start the same command there with its TF_CONFIG, check the address "
            "and that the port is open between the hosts, or allow more time with "
            "--cluster-timeout"
        )
    return (
        f"{me} gave up after {timeout:.0f} s (--cluster-timeout): every other worker answers at "
        "its address but the cluster did not form; check that all workers were given the same "
        "cluster in TF_CONFIG and that no worker stopped with an error"
    )


def describe_collective_failure(exc: BaseException, cluster: Cluster, timeout: float) -> str:
    """A user's message for a collective operation that failed while training (a peer died, or
    was slower than `timeout`)."""
    first = f"{type(exc).__name__}: {tf_error_line(exc)}"
    silent = unreachable_peers(cluster)
    gone = (
        "no longer answers: " + ", ".join(f"{t} {i} at {a}" for t, i, a in silent)
        if silent
        else "every other worker still answers, so one of them failed or fell behind"
    )
    return (
        f"{cluster.name}: training stopped, the cluster lost a worker ({gone}); nothing was "
        f"written. A collective operation waits at most {timeout:.0f} s (--cluster-timeout). "
        f"Restart all workers. (TensorFlow: {first})"
    )


def tf_error_line(exc: BaseException) -> str:
    """The line of a TensorFlow error that says what happened ("Socket closed", "Deadline
    Exceeded"), not the "Graph execution error:" or node trace around it."""
    noise = (
        "graph execution error",
        "detected at node",
        "additional grpc",
        "file ",
        "[[",
        ":unknown",
    )
    for line in str(exc).splitlines():
        text = line.strip()
        if text and not text.lower().startswith(noise):
            return text
    return type(exc).__name__
