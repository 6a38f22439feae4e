"""MirroredStrategy over two logical CPU devices. Logical devices must be configured before
TensorFlow initialises, so the run happens in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "grocery" / "train"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from training.strategy import split_cpu
    split_cpu(2)
    from training.config import FitConfig
    from training.fit import fit
    cfg = FitConfig(alpha=0.35, input_size=48, embedding_dim=8, weights=None, epochs=2,
                    frozen_epochs=2, unfreeze=(), batch_size=8, lr=1e-3,
                    strategy="mirrored", head="cosface", classes=("Banana", "Oatly-Oat-Milk"))
    res = fit(sys.argv[1], sys.argv[2], cfg, progress=False)
    print("RESULT " + json.dumps({"losses": [r["loss"] for r in res.history]}))
    """
)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(FIXTURE), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    losses = json.loads(line[len("RESULT ") :])["losses"]
    assert len(losses) == 2 and all(v == v for v in losses)  # ran, no NaN
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    t = cfg["training"]
    assert t["replicas"] == 2
    assert t["global_batch_size"] == 16  # 8 per replica x 2
    assert [s["lr"] for s in t["stages"]] == pytest.approx([2e-3])  # linear scaling
    assert (tmp_path / "run" / "extractor.keras").is_file()
    # weights=None: BN statistics re-estimated over the training images under the strategy too
    assert t["bn_recalibration"]["images"] == cfg["data"]["n_train"]
