"""`--strategy multiworker` for real: two worker processes on loopback ports train one model, and a
worker whose peer never comes stops with a clear error in its time limit. Plus TF_CONFIG parsing
and the wait for the peers, which need no TensorFlow."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from training.strategy import ClusterError, read_cluster, wait_for_peers

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "grocery" / "train"
CLASSES = "Banana,Oatly-Oat-Milk,Alpro-Blueberry-Soyghurt"
TINY = [
    "--weights", "none", "--alpha", "0.35", "--input-size", "96", "--embedding-dim", "16",
    "--frozen-epochs", "0", "--batch-size", "4", "--no-augment", "--finetune-lr", "1e-3",
    "--seed", "0", "--quiet",
]  # fmt: skip


def free_ports(n: int) -> list[int]:
    """Ports nothing listens on now (the OS picks them; released before use)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def worker(ports: list[int], index: int, out: Path, tmp: Path, *args: str) -> subprocess.Popen:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TF_CONFIG": tf_config(ports, index),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp),  # where a non-chief worker's scratch copy of the run goes
    }
    cmd = [sys.executable, "-m", "training", "fit", str(FIXTURE), "--classes", CLASSES]
    cmd += [*TINY, "--strategy", "multiworker", "--out", str(out), *args]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_workers_train_one_model(tmp_path: Path) -> None:
    ports = free_ports(2)
    procs = [
        # softmax: from scratch, ArcFace's scaled loss (~30) rose as often as it fell in 2 epochs
        worker(
            ports,
            i,
            tmp_path / f"run{i}",
            tmp_path / f"tmp{i}",
            "--epochs",
            "6",
            "--head",
            "softmax",
            "--patience",  # no early stop on the (noisy, see below) validation loss
            "10",
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]

    # Only the chief (worker 0) wrote a run; worker 1 wrote nothing and removed its scratch copy.
    run = tmp_path / "run0"
    assert (run / "extractor.keras").is_file()
    assert not (tmp_path / "run1").exists()
    assert list((tmp_path / "tmp1").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []

    cfg = json.loads((run / "config.json").read_text())
    t = cfg["training"]
    assert t["workers"] == 2 and t["replicas"] == 2
    assert t["global_batch_size"] == 8  # 4 per replica x 2 replicas
    assert [s["lr"] for s in t["stages"]] == pytest.approx([2e-3])  # linear scaling

    # Identical final weights: worker 1 reports the SHA-256 of its final extractor weights, the
    # chief records its own, and the extractor the chief saved hashes to the same value (so its
    # embeddings are the ones worker 1 ended with, for any image).
    match = re.search(r"final extractor weights sha256 ([0-9a-f]{64})", outs[1][0])
    assert match, outs[1][0]
    assert t["extractor_weights_sha256"] == match.group(1)
    from training.fit import weights_sha256
    from training.model import load_extractor

    assert weights_sha256(load_extractor(run)) == match.group(1)

    # The training loss went down. (Not asserted for the validation loss: from scratch, the
    # backbone's BatchNormalization statistics are only re-estimated after training, so the
    # validation loss during training is noise; it is the same on every worker all the same.)
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    loss = [float(r["loss"]) for r in rows]
    assert len(rows) == 6
    print("training loss by epoch:", loss)
    assert loss[-1] < loss[0], rows


@pytest.mark.slow
def test_worker_whose_peer_never_comes_stops_in_time(tmp_path: Path) -> None:
    ports = free_ports(2)
    proc = worker(
        ports, 0, tmp_path / "run0", tmp_path / "tmp", "--epochs", "1", "--cluster-timeout", "10"
    )
    assert proc.stderr is not None
    lines: list[str] = []
    joined: list[float] = []

    def read() -> None:  # owns `lines` and `joined` until the process ends
        assert proc.stderr is not None
        for line in proc.stderr:
            if "joining 2 workers" in line:
                joined.append(time.monotonic())
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait(timeout=600)  # importing TensorFlow on a loaded machine takes a while
    ended = time.monotonic()
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 1, err[-3000:]
    assert joined, err[-3000:]
    # Measured from the moment it starts waiting: the 10 s limit, plus leaving TensorFlow.
    assert 10 <= ended - joined[0] < 40, err[-3000:]
    assert f"waiting for worker 1 at 127.0.0.1:{ports[1]}, which never answered" in err
    assert "--cluster-timeout" in err
    assert not (tmp_path / "run0").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run0")] == []


def test_wait_for_peers_names_the_missing_address_and_keeps_time() -> None:
    ports = free_ports(3)
    env = {"TF_CONFIG": tf_config(ports, 1)}
    cluster = read_cluster(env)
    assert cluster is not None and cluster.num_workers == 3 and not cluster.is_chief
    # Worker 0 answers (something listens on its port); worker 2 never does.
    with socket.create_server(("127.0.0.1", ports[0])):
        started = time.monotonic()
        with pytest.raises(ClusterError) as err:
            wait_for_peers(cluster, timeout=1.5, poll=0.1)
        waited = time.monotonic() - started
    assert 1.5 <= waited < 5
    msg = str(err.value)
    assert f"waiting for worker 2 at 127.0.0.1:{ports[2]}" in msg
    assert f"127.0.0.1:{ports[0]}" not in msg.split("waiting for")[1]
    assert "--cluster-timeout" in msg


def test_wait_for_peers_returns_once_every_peer_answers() -> None:
    ports = free_ports(2)
    cluster = read_cluster({"TF_CONFIG": tf_config(ports, 0)})
    assert cluster is not None and cluster.is_chief
    peer = read_cluster({"TF_CONFIG": tf_config(ports, 1)})
    assert peer is not None
    # The peer waits too, in a thread: each sees the other's listener, and both return.
    errors: list[BaseException] = []
    done = threading.Event()

    def other() -> None:
        try:
            wait_for_peers(peer, timeout=10, poll=0.05)
            # Then TensorFlow's server takes its port over (here: a plain listener) while this
            # side may not have seen it yet.
            with socket.create_server(("127.0.0.1", ports[1])):
                done.wait(15)
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    try:
        wait_for_peers(cluster, timeout=10, poll=0.05)
        with socket.create_server(("127.0.0.1", ports[0])):
            done.set()
            t.join(10)
    finally:
        done.set()
    assert not t.is_alive() and not errors


def test_wait_for_peers_reports_a_taken_port() -> None:
    ports = free_ports(2)
    cluster = read_cluster({"TF_CONFIG": tf_config(ports, 0)})
    assert cluster is not None
    with socket.create_server(("", ports[0])), pytest.raises(ClusterError, match="cannot listen"):
        wait_for_peers(cluster, timeout=1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker"}}', "ps"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "not in"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "more than once"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
        ('{"cluster": {"worker": ["a:1"]}}', "needs a 'task'"),
    ],
)  # fmt: skip
def test_bad_tf_config_is_rejected(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_cluster({"TF_CONFIG": raw})


def test_chief_is_the_chief_task_or_worker_0() -> None:
    assert read_cluster({}) is None
    both = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    chief = read_cluster({"TF_CONFIG": json.dumps({"cluster": both, "task": {"type": "chief"}})})
    assert chief is not None and chief.is_chief and chief.num_workers == 3
    w0 = read_cluster(
        {"TF_CONFIG": json.dumps({"cluster": both, "task": {"type": "worker", "index": 0}})}
    )
    assert w0 is not None and not w0.is_chief and w0.address == "w:1"


def test_worker_shards_are_disjoint_and_cover_every_image() -> None:
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from training.data import Arrays, worker_train_dataset

    n = 10
    images = np.zeros((n, 8, 8, 3), np.uint8)
    labels = np.arange(n, dtype=np.int32)  # the label is the image's id
    firsts = []
    for k in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=k, num_replicas_in_sync=2
        )
        ds = worker_train_dataset(Arrays(images, labels), ctx, 8, 4, augment=False, seed=3)
        it = iter(ds)
        batches = [next(it)[1].numpy() for _ in range(3)]
        assert [len(b) for b in batches] == [2, 2, 2]  # global batch 4 / 2 replicas
        firsts.append(np.concatenate(batches)[: n // 2])
    # Over the first epoch's worth of images the two workers saw every image once.
    assert sorted(np.concatenate(firsts).tolist()) == list(range(n))
