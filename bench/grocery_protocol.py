"""Grocery protocol v1, end to end for one head, and a row in docs/BENCHMARKS.md per model.

    python bench/grocery_protocol.py --head arcface --input-size 160 --epochs 12 --frozen-epochs 3 \\
        --data ../shared/data/grocery --out runs/bench-arcface
    python bench/grocery_protocol.py --head imagenet --data ../shared/data/grocery \\
        --out runs/bench-imagenet

Steps (each printed and logged to OUT/bench.log; each skipped when its output already exists, so
an interrupted run resumes where it stopped):
1. OUT/data/{train,val}/<class>: links to the protocol's `train_classes` folders only, so training,
   validation, threshold calibration and int8 calibration never see a held-out product.
2. `python -m training fit OUT/data --out OUT/run ...`            (skipped if OUT/run/extractor.keras)
3. `python -m training calibrate OUT/run --data OUT/data`         (skipped if a threshold is set)
   With `--calib-every K`, every K-th training class (sorted names, from the K-th) is kept out of
   fit and linked (train/ and val/ images) into OUT/calib/val/<class>, and the threshold is
   calibrated there with `--unseen`: on products the model never saw, like the held-out ones.
4. `python -m training evaluate --model OUT/run --protocol P ...` -> OUT/eval-float
5. `python -m convert OUT/run --quant int8 --calibration OUT/data/train --out OUT/bundle-int8`
6. `python -m training evaluate --model OUT/bundle-int8 ...`      -> OUT/eval-int8
7. one row per model appended to docs/BENCHMARKS.md.

`--head imagenet` is the no-training reference: MobileNetV2 1.0 ImageNet weights, global-average-
pooled features at 224 px, images resized whole; its threshold is calibrated the same way
(leave-class-out on the training classes' val/ images); float only.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("bench.grocery_protocol")

BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
TABLE_HEADER = (
    "| date (UTC) | head | backbone | input | epochs | model | P@1 | MAP@R | AUROC (leave-class-out) "
    "| threshold | accepted & right | false accept | wall time | commit | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
HEADS = ("imagenet", "arcface", "cosface", "sphereface", "normface", "softmax")


class Step:
    """Runs and logs the pipeline's commands."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.log_path = out / "bench.log"

    def note(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")

    def run(self, cmd: list[str]) -> None:
        line = " ".join(shlex.quote(c) for c in cmd)
        self.note(f"$ {line}")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
        self.note(f"  exit {proc.returncode} after {time.monotonic() - start:.0f} s")
        if proc.returncode != 0:
            raise SystemExit(f"step failed (exit {proc.returncode}): {line}\nsee {self.log_path}")

    def skip(self, what: str, because: Path) -> None:
        self.note(f"skip {what}: {because} exists")


@functools.cache
def commit_id() -> str:
    """The commit the run started from (`+dirty` with uncommitted changes then): cached at the
    first call, so rows written later name the code that ran, not a commit made meanwhile nor
    this script's own edit of docs/BENCHMARKS.md."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain") else "")


def link_training_classes(data: Path, out: Path, classes: list[str]) -> Path:
    """OUT/data/{train,val}/<class>/<file> -> DATA/... for the training classes only.

    Real folders holding per-file links: Path.rglob (Python < 3.13) does not descend into linked
    folders, and convert's calibration reader walks the tree with it."""
    root = out / "data"
    for sub in ("train", "val"):
        for c in classes:
            src = (data / sub / c).resolve()
            if not src.is_dir():
                if sub == "train":
                    raise SystemExit(f"{src} is missing: is --data the grocery folder?")
                continue
            dst = root / sub / c
            if dst.is_symlink():  # layout of an earlier version of this script
                dst.unlink()
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.iterdir()):
                link = dst / f.name
                if link.is_symlink() and link.resolve() == f.resolve():
                    continue
                if link.exists() or link.is_symlink():
                    raise SystemExit(f"{link} exists and is not a link to {f}; remove {root}")
                link.symlink_to(f.resolve())
    return root


def append_row(row: dict[str, Any], md: Path = BENCHMARKS_MD) -> None:
    def f(x: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if x is None else fmt.format(x)

    cells = [
        row["date"],
        row["head"],
        row["backbone"],
        f"{row['input_size']} px",
        str(row["epochs"]),
        row["model"],
        f(row["p_at_1"]),
        f(row["map_at_r"]),
        f(row["auroc"]),
        f(row["threshold"], "{:.4f}"),
        f(row["accepted_right"]),
        f(row["false_accept"]),
        f"{row['wall_minutes']:.1f} min",
        f"`{row['commit']}`",
        f"`{row['command']}`",
    ]
    line = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    text = md.read_text(encoding="utf-8") if md.is_file() else "# Benchmarks\n\n"
    if TABLE_HEADER.splitlines()[0] not in text:
        text = text.rstrip("\n") + "\n\n" + TABLE_HEADER
    # Insert after the table's last row, so sections written below the table stay below it.
    lines = text.splitlines(keepends=True)
    end = lines.index(TABLE_HEADER.splitlines(keepends=True)[0]) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end - 1] = lines[end - 1].rstrip("\n") + "\n"
    md.write_text("".join([*lines[:end], line, *lines[end:]]), encoding="utf-8")
    print(f"appended to {md}:\n{line}", end="")


def row_from_report(
    report: dict[str, Any],
    *,
    head: str,
    backbone: str,
    input_size: int,
    epochs: Any,
    model: str,
    wall: float,
    command: str,
) -> dict[str, Any]:
    m = report["metrics"]
    at = m.get("at_threshold") or {}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "head": head,
        "backbone": backbone,
        "input_size": input_size,
        "epochs": epochs,
        "model": model,
        "p_at_1": m["p_at_1"],
        "map_at_r": m["map_at_r"],
        "auroc": m["auroc_leave_class_out"],
        "threshold": at.get("value"),
        "accepted_right": at.get("accepted_right"),
        "false_accept": at.get("false_accept_leave_class_out"),
        "wall_minutes": wall / 60.0,
        "commit": commit_id(),
        "command": command,
    }


def run_imagenet(args: argparse.Namespace, step: Step, data_root: Path, command: str) -> None:
    """Reference row: MobileNetV2 1.0 ImageNet GAP features at 224 px, no training."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from device.bundle import InputSpec
    from training.calibrate import calibrate_embedder, calibration_split, public
    from training.embed import KerasEmbedder
    from training.evaluate import evaluate

    start = time.monotonic()
    size = args.input_size or 224
    step.note(f"imagenet reference: MobileNetV2 1.0 ImageNet GAP features, {size} px, no training")
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=1.0,
        include_top=False,
        weights="imagenet",
        pooling="avg",
    )
    inputs = keras.Input((size, size, 3), dtype="float32")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    model = keras.Model(inputs, base(x), name="imagenet_gap")
    spec = InputSpec(height=size, width=size, dtype="float32", resize="area")
    emb = KerasEmbedder(model, spec, name=f"imagenet-mobilenet_v2-1.0-{size}-gap")
    split, source = calibration_split({"classes": args.classes}, data_root)
    cal_path = args.out / "threshold.json"
    if cal_path.is_file():
        step.skip("calibration", cal_path)
        threshold = json.loads(cal_path.read_text())
    else:
        step.note(f"calibrating on {source}")
        threshold = public(calibrate_embedder(emb, split, target_far=args.target_far))
        threshold["data"] = source
        cal_path.write_text(json.dumps(threshold, indent=2) + "\n")
    step.note(f"threshold {threshold['value']:.4f} (achieved FAR {threshold['achieved_far']:.4f})")
    emb.threshold = threshold["value"]
    emb.threshold_info = threshold
    report = evaluate(emb, args.out / "eval-float", protocol=args.protocol, shots=args.shots)
    wall = time.monotonic() - start
    if not args.no_row:
        append_row(
            row_from_report(
                report,
                head="none (ImageNet features)",
                backbone="MobileNetV2 1.0 ImageNet",
                input_size=size,
                epochs=0,
                model="keras float32",
                wall=wall,
                command=command,
            )
        )


def link_calibration_classes(data: Path, out: Path, classes: list[str]) -> Path:
    """OUT/calib/val/<class>/<file> -> every train/ and val/ image of the calibration classes."""
    root = out / "calib"
    for c in classes:
        dst = root / "val" / c
        dst.mkdir(parents=True, exist_ok=True)
        for sub in ("train", "val"):
            src = (data / sub / c).resolve()
            for f in sorted(src.iterdir()) if src.is_dir() else []:
                link = dst / f"{sub}-{f.name}"
                if not link.is_symlink():
                    link.symlink_to(f)
    return root


def run_head(args: argparse.Namespace, step: Step, data_root: Path, command: str) -> None:
    py = sys.executable
    start = time.monotonic()
    run_dir = args.out / "run"
    fit_skipped = (run_dir / "extractor.keras").is_file()
    if fit_skipped:
        step.skip("fit", run_dir / "extractor.keras")
    else:
        cmd = [
            py,
            "-m",
            "training",
            "fit",
            str(data_root),
            "--out",
            str(run_dir),
            "--head",
            args.head,
            "--input-size",
            str(args.input_size or 160),
            "--alpha",
            str(args.alpha),
            "--epochs",
            str(args.epochs),
            "--frozen-epochs",
            str(args.frozen_epochs),
        ]
        step.run(cmd + list(args.fit_arg))
    cfg = json.loads((run_dir / "config.json").read_text())
    if cfg.get("threshold") and not args.recalibrate:
        step.skip("calibrate", run_dir / "config.json [threshold]")
    else:
        step.run(
            [
                py,
                "-m",
                "training",
                "calibrate",
                str(run_dir),
                "--data",
                str(args.calib_root or data_root),
                *(["--unseen"] if args.calib_root else []),
                "--target-far",
                str(args.target_far),
            ]
        )
    cfg = json.loads((run_dir / "config.json").read_text())
    ev = [
        py,
        "-m",
        "training",
        "evaluate",
        "--protocol",
        str(args.protocol),
        "--shots",
        str(args.shots),
    ]
    reports: list[tuple[str, Path]] = []
    out_float = args.out / "eval-float"
    if (out_float / "report.json").is_file():
        step.skip("evaluate float", out_float / "report.json")
    else:
        step.run([*ev, "--model", str(run_dir), "--out", str(out_float)])
    reports.append(("keras float32", out_float))
    if not args.skip_int8:
        bundle = args.out / "bundle-int8"
        if (bundle / "model.json").is_file():
            step.skip("convert", bundle / "model.json")
        else:
            step.run(
                [
                    py,
                    "-m",
                    "convert",
                    str(run_dir),
                    "--quant",
                    "int8",
                    "--calibration",
                    str(data_root / "train"),
                    "--out",
                    str(bundle),
                ]
            )
        out_int8 = args.out / "eval-int8"
        if (out_int8 / "report.json").is_file():
            step.skip("evaluate int8", out_int8 / "report.json")
        else:
            step.run([*ev, "--model", str(bundle), "--out", str(out_int8)])
        reports.append(("tflite int8", out_int8))
    wall = time.monotonic() - start
    model_cfg = cfg.get("model", {})
    training_cfg = cfg.get("training") or {}
    if fit_skipped and training_cfg.get("time_s"):
        # the fit ran earlier (resumed run): count the time it recorded, so the row is the whole pipeline
        wall += float(training_cfg["time_s"])
        step.note(f"fit time from config.json: {training_cfg['time_s']:.0f} s")
    epochs: Any = training_cfg.get("epochs", args.epochs)
    ran = training_cfg.get("epochs_run")
    if ran is not None and ran != epochs:
        epochs = f"{epochs} (ran {ran}: early stop)"
    if args.no_row:
        return
    for name, folder in reports:
        report = json.loads((folder / "report.json").read_text())
        append_row(
            row_from_report(
                report,
                head=args.head,
                backbone=f"MobileNetV2 {model_cfg.get('alpha', args.alpha)} ImageNet",
                input_size=int(model_cfg.get("input_size", args.input_size or 160)),
                epochs=epochs,
                model=name,
                wall=wall,
                command=command,
            )
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--head", required=True, choices=HEADS)
    p.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "grocery",
        help="the Grocery Store Dataset folder (default: ../shared/data/grocery beside the repo)",
    )
    p.add_argument("--protocol", type=Path, help="default: DATA/protocol.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--input-size", type=int, help="default 160 (224 for --head imagenet)")
    p.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width (default 1.0)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--frozen-epochs", type=int, default=3)
    p.add_argument("--shots", type=int, default=4, help="enrollment shots per product (default 4)")
    p.add_argument(
        "--target-far",
        type=float,
        default=0.01,
        help="false-accept rate the threshold is calibrated for (default 0.01)",
    )
    p.add_argument(
        "--fit-arg",
        action="append",
        default=[],
        help="extra argument passed to `training fit` (repeatable, e.g. --fit-arg=--batch-size=64)",
    )
    p.add_argument(
        "--calib-every",
        type=int,
        default=0,
        help="keep every K-th training class out of fit and calibrate the threshold on those "
        "(products the model never saw); 0 = calibrate on the training classes' val/ images",
    )
    p.add_argument("--skip-int8", action="store_true", help="the float model only: no conversion")
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="calibrate again although the run has a threshold",
    )
    p.add_argument("--no-row", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python bench/grocery_protocol.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    args.protocol = args.protocol or args.data / "protocol.json"
    proto = json.loads(args.protocol.read_text(encoding="utf-8"))
    args.classes = list(proto["train_classes"])
    overlap = set(args.classes) & set(proto.get("heldout_classes", []))
    if overlap:
        raise SystemExit(
            f"{args.protocol}: classes both trained on and held out: {sorted(overlap)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    step = Step(args.out)
    step.note(f"# {command}  (commit {commit_id()})")
    args.calib_root = None
    if args.calib_every:
        if args.head == "imagenet" or args.calib_every < 2:
            raise SystemExit("--calib-every takes K >= 2 and a trained head")
        ordered = sorted(args.classes)
        calib = ordered[args.calib_every - 1 :: args.calib_every]
        args.classes = [c for c in ordered if c not in calib]
        args.calib_root = link_calibration_classes(args.data, args.out, calib)
        step.note(f"calibration classes kept out of fit ({len(calib)}): {', '.join(calib)}")
    data_root = link_training_classes(args.data, args.out, args.classes)
    if args.head == "imagenet":
        run_imagenet(args, step, data_root, command)
    else:
        run_head(args, step, data_root, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
