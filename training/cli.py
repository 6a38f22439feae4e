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
from typing import Any

from .config import HEAD_DEFAULTS, HEADS, STRATEGIES, FitConfig, is_pretrained

log = logging.getLogger(__name__)

PLUGIN_MODULES = ("training.calibrate", "training.evaluate")


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of options whose help says what they fall back to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.required:
            return action.help or ""
        return super()._get_help_string(action)


def _unfreeze(text: str) -> tuple[float, ...]:
    text = text.strip().lower()
    if text in ("", "0", "none", "no"):
        return ()
    if text == "all":
        return (1.0,)
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--unfreeze takes fractions like 0.25,0.5, 'all' or 'none', got {text!r}"
        ) from exc


def _weights(text: str) -> str | None:
    return None if text.lower() == "none" else text


def add_fit_parser(sub: Any) -> None:
    d = FitConfig.__dataclass_fields__
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
    p.add_argument(
        "--head",
        choices=HEADS,
        default=d["head"].default,
        help="defaults (s, m): " + ", ".join(f"{h} {v}" for h, v in HEAD_DEFAULTS.items()),
    )
    p.add_argument("--scale", type=float, default=None, help="logit scale s (default: the head's)")
    p.add_argument("--margin", type=float, default=None, help="margin m (default: the head's)")
    p.add_argument("--easy-margin", action="store_true", help="ArcFace: margin only where cos > 0")
    p.add_argument(
        "--sphereface-lambda",
        type=float,
        default=d["sphereface_lambda"].default,
        help="SphereFace: weight of the plain cosine in its softened target (lam*cos + psi)/(1 + lam), fixed at the paper's final value",
    )
    p.add_argument("--alpha", type=float, default=d["alpha"].default, help="MobileNetV2 width")
    p.add_argument("--input-size", type=int, default=d["input_size"].default, help="pixels")
    p.add_argument(
        "--embedding-dim",
        type=int,
        default=d["embedding_dim"].default,
        help="size of the embedding the device stores and matches",
    )
    p.add_argument(
        "--dropout", type=float, default=d["dropout"].default, help="before the embedding layer"
    )
    p.add_argument(
        "--weights",
        type=_weights,
        default="imagenet",
        help="imagenet, none, a MobileNetV2 .h5 file, or a RUN_DIR/extractor.keras to start from",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=d["epochs"].default,
        help="TOTAL epochs over all stages (frozen + unfrozen)",
    )
    p.add_argument(
        "--frozen-epochs",
        type=int,
        default=d["frozen_epochs"].default,
        help="first epochs with the backbone frozen",
    )
    p.add_argument(
        "--unfreeze",
        type=_unfreeze,
        default=None,
        help="fractions of backbone blocks unfrozen (top first), one stage each, sharing the "
        "remaining epochs evenly; 'all' or 'none' (default: "
        + ",".join(map(str, d["unfreeze"].default))
        + "; 'all' with --weights none, as a random backbone has nothing to keep frozen)",
    )
    p.add_argument("--lr", type=float, default=d["lr"].default, help="learning rate, frozen stage")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=d["finetune_lr"].default,
        help="learning rate of the first unfrozen stage (halved each further stage)",
    )
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="per replica")
    p.add_argument(
        "--val-split",
        type=float,
        default=d["val_split"].default,
        help="validation share per class when DATA_DIR has no val/",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="a subset: comma-separated names, a file with one per line, or a JSON list / "
        "protocol.json (its train_classes)",
    )
    p.add_argument(
        "--seed", type=int, default=d["seed"].default, help="validation split, shuffling, init"
    )
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument(
        "--flip", action="store_true", help="random horizontal flips (off: packaging text)"
    )
    p.add_argument(
        "--aug-zoom",
        type=float,
        default=d["aug_zoom"].default,
        help="smallest random crop, as a fraction of the image side (1 = no zoom)",
    )
    p.add_argument(
        "--aug-colour",
        type=float,
        default=d["aug_colour"].default,
        help="random per-channel gain in [1 - x, 1 + x] (white balance, tinted light; 0 = off)",
    )
    p.add_argument(
        "--aug-erase",
        type=float,
        default=d["aug_erase"].default,
        help="probability of painting one random rectangle over an image (occlusion; 0 = off)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d["early_stopping_patience"].default,
        help="early stopping patience (epochs, per stage)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="default",
        help="tf.distribute: mirrored (GPUs), multiworker (hosts, TF_CONFIG)",
    )
    p.add_argument(
        "--cluster-timeout",
        type=float,
        default=d["cluster_timeout"].default,
        metavar="SECONDS",
        help="multiworker: how long a worker waits for the others to join, and for each "
        "exchange with them while training, before it stops with an error",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_fit)


def config_from_args(args: argparse.Namespace) -> FitConfig:
    from .data import parse_classes

    unfreeze = args.unfreeze
    if unfreeze is None:
        unfreeze = FitConfig.unfreeze if is_pretrained(args.weights) else (1.0,)
    return FitConfig(
        head=args.head,
        alpha=args.alpha,
        input_size=args.input_size,
        embedding_dim=args.embedding_dim,
        weights=args.weights,
        dropout=args.dropout,
        scale=args.scale,
        margin=args.margin,
        easy_margin=args.easy_margin,
        sphereface_lambda=args.sphereface_lambda,
        epochs=args.epochs,
        frozen_epochs=args.frozen_epochs,
        unfreeze=unfreeze,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        val_split=args.val_split,
        classes=parse_classes(args.classes),
        seed=args.seed,
        augment=not args.no_augment,
        flip=args.flip,
        aug_zoom=args.aug_zoom,
        aug_colour=args.aug_colour,
        aug_erase=args.aug_erase,
        early_stopping_patience=args.patience,
        strategy=args.strategy,
        cluster_timeout=args.cluster_timeout,
    )


def run_fit(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validates before TensorFlow is imported
    from .fit import fit

    result = fit(args.data_dir, args.out, cfg, progress=not args.quiet, overwrite=args.overwrite)
    t = result.config["training"]
    best = result.best_value if result.best_value is not None else float("nan")
    skipped = result.config["data"]["n_skipped"]
    if not result.written:  # a non-chief worker of multi-worker training
        print(
            f"worker done: {t['epochs_run']} epochs in {t['time_s']} s, best {result.monitor} "
            f"{best:.4f} (epoch {result.best_epoch}); the chief wrote the run; final extractor "
            f"weights sha256 {t['extractor_weights_sha256']}"
        )
        return 0
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
            log.warning("cannot load %s (its subcommand is unavailable): %s", name, exc)
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

    from .strategy import ClusterError

    try:
        return int(args.func(args) or 0)
    except (ValueError, DeviceError) as exc:  # DeviceError: e.g. a damaged model bundle (3)
        code = exit_code_for(exc)
        if code is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return code
    except ClusterError as exc:  # multi-worker training: a peer never came, or died
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # fit writes its run whole or not at all, calibrate its config.json in one rename.
        print(
            "interrupted: a run being written was discarded; nothing else changed", file=sys.stderr
        )
        return EXIT_INTERRUPTED
