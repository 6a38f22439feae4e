"""Command line: `python -m convert SRC --quant int8 --calibration DIR --out BUNDLE_DIR`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from device.errors import DeviceError
from device.exitcodes import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_code_for,
)

from .calibration import DEFAULT_MAX_IMAGES
from .latency import DEFAULT_RUNS
from .parity import DEFAULT_MIN_COSINE
from .pipeline import PARITY_FILE, ConvertError, ParityError, convert_run
from .quantize import QUANT_MODES

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description=(
            "Convert a trained extractor (RUN_DIR or extractor .keras) into a TFLite model bundle "
            "(model.tflite + model.json + parity.json) for the device. The parity check against "
            "the Keras model always runs; the bundle is refused when the mean cosine is too low."
        ),
    )
    p.add_argument(
        "src", type=Path, help="RUN_DIR written by `training fit`, or an extractor .keras"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--quant", choices=QUANT_MODES, default="int8", help="default: %(default)s")
    p.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="folder (flat or folder-per-class tree) of images from the training classes: "
        "calibrates int8 and, held out (every 5th), feeds the parity check",
    )
    p.add_argument(
        "--max-calibration",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help="cap on images taken from --calibration, class-balanced (default: %(default)s)",
    )
    p.add_argument(
        "--parity",
        type=Path,
        help="held-out images for the parity check (default: from --calibration)",
    )
    p.add_argument("--enroll", type=Path, help="folder-per-product gallery tree, for P@1")
    p.add_argument("--query", type=Path, help="folder-per-product query tree, for P@1")
    p.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help="required mean Keras/TFLite cosine (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="write the bundle even if parity fails")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out bundle")
    p.add_argument("--name", help="model name recorded in model.json (default: from config.json)")
    p.add_argument(
        "--color-order", choices=("RGB", "BGR"), help="only for an extractor without config.json"
    )
    p.add_argument("--resize", choices=("area", "linear"), help="only without config.json")
    p.add_argument("--input-size", type=int, help="only without config.json")
    p.add_argument(
        "--latency-runs",
        type=int,
        default=DEFAULT_RUNS,
        help="timed runs per thread count (default: %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def summary(bundle: Path) -> str:
    report: dict[str, Any] = json.loads((bundle / PARITY_FILE).read_text(encoding="utf-8"))
    meta: dict[str, Any] = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    lines = [
        f"bundle      {bundle}  ({meta['name']}, {report['quantization']})",
        f"model id    {report['model_id']}",
        f"size        {report['size_bytes'] / 1e6:.2f} MB",
        f"input       {meta['input']['height']}x{meta['input']['width']} "
        f"{meta['input']['color_order']} {meta['input']['dtype']} "
        f"quantization={meta['input']['quantization']}",
        f"output      {meta['output']['embedding_dim']} {meta['output']['dtype']}",
        f"threshold   {meta['threshold']}",
        f"parity      mean cosine {report['mean_cosine']:.4f}, min {report['min_cosine']:.4f} "
        f"over {report['n']} held-out images"
        + ("  (FORCED: below the bar)" if report["forced"] else ""),
    ]
    if "p_at_1" in report:
        pa = report["p_at_1"]
        lines.append(
            f"P@1         keras {pa['keras']['p_at_1']:.4f}, tflite {pa['tflite']['p_at_1']:.4f} "
            f"({pa['tflite']['n_queries']} queries, {pa['tflite']['n_products']} products)"
        )
    lat = report["latency"]
    for key in sorted(k for k in lat if k.startswith("threads_")):
        lines.append(
            f"latency     {key.split('_')[1]} thread(s): median {lat[key]['median_ms']:.2f} ms, "
            f"p90 {lat[key]['p90_ms']:.2f} ms ({lat['runtime']}, {lat['runs']} runs)"
        )
    return "\n".join(lines)


def _interrupted() -> int:
    print(
        "convert: interrupted: no bundle was written (an existing --out is unchanged)",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        bundle = convert_run(
            args.src,
            args.out,
            args.quant,
            args.calibration,
            parity_dir=args.parity,
            enroll_dir=args.enroll,
            query_dir=args.query,
            max_images=args.max_calibration,
            min_cosine=args.min_cosine,
            force=args.force,
            overwrite=args.overwrite,
            name=args.name,
            color_order=args.color_order,
            resize=args.resize,
            input_size=args.input_size,
            latency_runs=args.latency_runs,
        )
    except KeyboardInterrupt:
        return _interrupted()
    except ParityError as exc:
        print(f"convert: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, DeviceError) as exc:  # a DeviceError is a bundle/runtime problem: 3
        print(f"convert: error: {exc}", file=sys.stderr)
        return exit_code_for(exc) or EXIT_BAD_INPUT
    except ConvertError as exc:
        if "KeyboardInterrupt" in str(exc):  # Ctrl-C inside TensorFlow's converter, wrapped
            return _interrupted()
        print(f"convert: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary(bundle))
    return EXIT_OK
