"""Command line: `python -m training fit DATA_DIR --out RUN_DIR [options]`.

Other modules add subcommands without editing this file: any module in `PLUGIN_MODULES` that exists
and defines `add_parser(subparsers)` registers its own; each subparser sets `func=callable(args)`
returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import Field, fields
from typing import Any

from .config import FitConfig, unfreeze_default

logger = logging.getLogger(__name__)

PLUGIN_MODULES = ("training.calibrate", "training.evaluate")


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of options whose help says what they fall back to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def _flag(f: Field[Any]) -> tuple[str, str]:
    """(option, argparse dest) of a FitConfig field."""
    flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    return flag, flag.lstrip("-").replace("-", "_")


def add_fit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "fit",
        help="train an embedding extractor on folder-per-class images",
        description="Train MobileNetV2 + a margin head on DATA_DIR/<class>/*.jpg (or DATA_DIR/train "
        "and DATA_DIR/val of that shape) and write RUN_DIR.",
        formatter_class=_DefaultsShown,
    )
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    for f in fields(FitConfig):
        if "help" not in f.metadata:
            continue  # not on the command line
        m = f.metadata
        flag, dest = _flag(f)
        if isinstance(f.default, bool):
            # --no-x is a plain switch too (its dest no_x is mapped back as "not").
            p.add_argument(flag, dest=dest, action="store_true", help=m["help"])
            continue
        p.add_argument(
            flag,
            dest=dest,
            metavar=None if m["choices"] else dest.upper(),
            type=m["type"] or type(f.default),
            choices=m["choices"],
            default=f.default if m["cli_default"] is ... else m["cli_default"],
            help=m["help"],
        )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_fit)


def config_from_args(args: argparse.Namespace) -> FitConfig:
    """The FitConfig of parsed `fit` arguments (every option is a field: see `cli` in config.py)."""
    values: dict[str, Any] = {}
    for f in fields(FitConfig):
        if "help" not in f.metadata:
            continue
        value = getattr(args, _flag(f)[1])
        if f.metadata["negate"]:
            value = not value
        post = f.metadata["post"]
        values[f.name] = post(value) if post is not None else value
    if values["unfreeze"] is None:
        values["unfreeze"] = unfreeze_default(values["weights"])
    return FitConfig(**values)


def run_fit(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validates before TensorFlow is imported
    from .fit import fit

    result = fit(args.data_dir, args.out, cfg, progress=not args.quiet, overwrite=args.overwrite)
    t = result.config["training"]
    best = result.best_value if result.best_value is not None else float("nan")
    skipped = result.config["data"]["n_skipped"]
    print(
        f"run written to {result.run_dir}: {t['epochs_run']} epochs in {t['time_s']} s, best "
        f"{result.monitor} {best:.4f} (epoch {result.best_epoch}); "
        f"{skipped} file(s) skipped; extractor: {result.run_dir / 'extractor.keras'}"
    )
    return 0


def _add_plugins(sub: Any) -> None:
    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a broken plug-in must not take `fit` down with it
            logger.warning("cannot load %s (its subcommand is unavailable): %s", name, exc)
            continue
        add = getattr(module, "add_parser", None)
        if callable(add):
            add(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_fit_parser(sub)
    _add_plugins(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from device.errors import DeviceError
    from device.exitcodes import EXIT_INTERRUPTED, exit_code_for

    try:
        return int(args.func(args) or 0)
    except (ValueError, DeviceError) as exc:  # DeviceError: e.g. a damaged model bundle (3)
        code = exit_code_for(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        # fit writes its run whole or not at all, calibrate its config.json in one rename.
        print(
            "interrupted: a run being written was discarded; nothing else changed", file=sys.stderr
        )
        return EXIT_INTERRUPTED
