"""Float vs int8 on protocol v1, parity, size and latency of the bundles of finished benchmark runs.

    python bench/bundle_report.py runs/bench-softmax runs/bench-arcface-far05 [--runs 200]

Reads what `bench/grocery_protocol.py` left in each OUT folder (`eval-float/report.json`,
`eval-int8/report.json`, `bundle-int8/parity.json`), measures the int8 bundle's single-image
latency again now (LiteRT when installed; 1 and 2 threads; run it on a quiet machine) and prints a
markdown table for docs/BENCHMARKS.md with the command and commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run bench/grocery_protocol.py for that folder first")
    return json.loads(path.read_text(encoding="utf-8"))


def row(out: Path, runs: int) -> str:
    from convert.latency import measure_latency

    f = _load(out / "eval-float" / "report.json")["metrics"]
    q = _load(out / "eval-int8" / "report.json")["metrics"]
    parity = _load(out / "bundle-int8" / "parity.json")
    meta = _load(out / "bundle-int8" / "model.json")
    lat = measure_latency(out / "bundle-int8" / "model.tflite", threads=(1, 2), runs=runs)
    delta = q["p_at_1"] - f["p_at_1"]
    return (
        f"| {meta['name']} (`{out}`) | {f['p_at_1']:.3f} | {q['p_at_1']:.3f} | {delta:+.3f} "
        f"| {f['auroc_leave_class_out']:.3f} / {q['auroc_leave_class_out']:.3f} "
        f"| {parity['mean_cosine']:.4f} (min {parity['min_cosine']:.3f}, n {parity['n']}) "
        f"| {parity['size_bytes'] / 1e6:.2f} MB "
        f"| {lat['threads_1']['median_ms']:.2f} / {lat['threads_2']['median_ms']:.2f} ms "
        f"({lat['runtime']}) |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outs", nargs="+", type=Path, help="OUT folders of bench/grocery_protocol.py")
    p.add_argument("--runs", type=int, default=200, help="timed invokes per thread count")
    args = p.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(
        "| model | P@1 float | P@1 int8 | int8 - float | AUROC float / int8 "
        "| Keras vs int8 cosine (held-out calibration images) | size | latency 1 / 2 threads |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for out in args.outs:
        print(row(out, args.runs))
    print(
        f"\n`python bench/bundle_report.py {' '.join(str(o) for o in args.outs)}` at commit "
        f"`{commit}`, {platform.machine()}, {platform.python_version()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
