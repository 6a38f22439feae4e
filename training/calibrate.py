"""Threshold calibration by leave-class-out on the training classes' validation images.

The device rejects a crop as "unknown" when its best product score is below the threshold. The
threshold is chosen for a target false-accept rate (FAR: the share of products that were never
enrolled but get accepted as some product), on data the held-out evaluation never sees.

Procedure (`leave_class_out_threshold`):
1. Take the validation images of the run's classes: `DATA_DIR/val/<class>/` when that folder
   exists, otherwise the held-back split `fit` made (`training.data.scan_dataset`, deterministic).
2. Gallery: per class, sorted by file name, its first k images (k = `--shots`, default 4) are its
   enrollment shots. Classes with fewer than 2 validation images are skipped and listed.
3. Every validation image is a probe once (validation sets are small: ~5 images per class in the
   grocery data, so "the images after the first k" would leave ~1 probe per class and a 1% FAR
   could not be resolved). A probe is scored per class, best view (as the device does):
   - genuine score: against its own class's first k images OTHER than itself;
   - impostor score: its best score among the other classes' galleries, i.e. what it would score
     as a product that was never enrolled (its own class left out of the gallery).
   No image is ever compared with itself, and a probe never sees its own class as an impostor.
4. The threshold is the smallest value whose FAR on the impostor scores is <= the target
   (`metrics.threshold_for_far`), and is written into `config.json["threshold"]`.

`--unseen` calibrates instead on the classes of `DATA/val/` (or of DATA, folder-per-class) that the
run was NOT trained on: products the model never saw, as every product enrolled on a device is.
(On the grocery benchmark this was not better: the threshold for a target false-accept rate depends
mostly on how alike the calibration products are; see docs/evaluation.md.)

`python -m training calibrate RUN_DIR [--data DIR] [--unseen] [--target-far 0.01] [--shots 4]`
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from device.folders import product_images
from device.images import list_images

from . import metrics
from .embed import ImageEmbedder, KerasEmbedder

logger = logging.getLogger(__name__)

DEFAULT_TARGET_FAR = 0.01
DEFAULT_GALLERY_SHOTS = 4


def leave_class_out_threshold(
    embeddings: np.ndarray,
    labels: list[str],
    *,
    target_far: float = DEFAULT_TARGET_FAR,
    gallery_shots: int = DEFAULT_GALLERY_SHOTS,
) -> dict[str, Any]:
    """Pick the threshold from labelled embeddings (rows of one class in file-name order).

    Every image is a probe once (see the module docstring): its class's gallery is the first k
    other images of the class, the other classes' galleries are their first k images.
    """
    if gallery_shots < 1:
        raise ValueError(f"gallery shots must be at least 1, got {gallery_shots}")
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    skipped = sorted(c for c, idx in by_class.items() if len(idx) < 2)
    used = [c for c in by_class if c not in skipped]
    if len(used) < 2:
        raise ValueError(
            f"calibration needs at least 2 classes with 2+ validation images, got {len(used)} "
            f"({len(skipped)} class(es) had fewer); add validation images or use --data"
        )
    emb = np.asarray(embeddings, dtype=np.float32)
    probes = [i for c in used for i in by_class[c]]
    probe_labels = [labels[i] for i in probes]
    gallery = [i for c in used for i in by_class[c][:gallery_shots]]
    sim = metrics.similarity(emb[probes], emb)  # (P, N) probes against every image
    products, scores = metrics.product_scores(sim[:, gallery], [labels[i] for i in gallery])
    # own class: its first k images other than the probe itself
    col = {c: j for j, c in enumerate(products)}
    for r, i in enumerate(probes):
        own = [j for j in by_class[labels[i]] if j != i][:gallery_shots]
        scores[r, col[labels[i]]] = sim[r, own].max()
    _, genuine, impostor = metrics.leave_class_out(products, scores, probe_labels)
    value = metrics.threshold_for_far(impostor, target_far)
    achieved = metrics.false_accept_rate(impostor, value)
    if achieved > target_far:
        logger.warning(
            "calibration cannot reach FAR %.3g: %.1f%% of impostor probes score %.4f or more "
            "(embeddings collapsed onto each other?); threshold capped at %.4f",
            target_far,
            100 * achieved,
            value,
            value,
        )
    predicted, best = metrics.predict(products, scores)
    rates = metrics.rates_at_threshold(best, predicted, probe_labels, impostor, value)
    return {
        "value": value,
        "target_far": float(target_far),
        "method": "leave-class-out",
        "n_genuine": len(genuine),
        "n_impostor": len(impostor),
        "achieved_far": achieved,
        "far_resolution": 1.0 / len(impostor),
        "genuine_accept_rate": float(np.mean(genuine >= np.float32(value))),
        "accepted_right": rates.accepted_right,
        "p_at_1": metrics.precision_at_1(predicted, probe_labels),
        "auroc": metrics.auroc(best, impostor),
        "gallery_shots": int(gallery_shots),
        "n_classes": len(used),
        "skipped_classes": skipped,
        "_scores": {"genuine": genuine, "impostor": impostor},
    }


def calibration_split(
    run_config: dict[str, Any], data_dir: str | Path | None = None, *, unseen: bool = False
) -> tuple[dict[str, list[Path]], str]:
    """The run's classes' validation images -> ({class: sorted paths}, description of the source);
    with `unseen`, the images of the classes the run was not trained on."""
    classes = list(run_config.get("classes") or [])
    if not classes:
        raise ValueError("config.json lists no classes; is this a RUN_DIR written by `fit`?")
    data_cfg = run_config.get("data") or {}
    if data_dir is None:
        data_dir = data_cfg.get("data_dir")
        if not data_dir:
            raise ValueError("config.json does not record the data folder; pass --data DIR")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist; pass --data DIR")
    if unseen:
        return unseen_split(classes, data_dir)
    val_root = data_dir / "val"
    if val_root.is_dir():
        split = {c: list_images(val_root / c) for c in classes if (val_root / c).is_dir()}
        split = {c: ps for c, ps in split.items() if ps}
        return split, f"{val_root}/<class>"
    # No val/ folder: rebuild the held-back split fit made (deterministic, stratified).
    from .data import scan_dataset

    train_cfg = run_config.get("training") or {}
    try:
        ds = scan_dataset(
            data_dir,
            classes=classes,
            val_split=float(train_cfg.get("val_split", 0.15)),
            seed=int(train_cfg.get("seed", 0)),
        )
    except ValueError as exc:
        raise ValueError(
            f"--data {data_dir} does not hold the photos the run was trained on as DATA/<class> "
            f"(or DATA/train/<class> and DATA/val/<class>) folders: {exc}"
        ) from exc
    split = {}
    for path, label in ds.val:
        name = ds.classes[label] if isinstance(label, (int, np.integer)) else str(label)
        split.setdefault(name, []).append(Path(path))
    split = {c: sorted(ps) for c, ps in split.items()}
    return split, f"held-back validation split of {data_dir} (training.data.scan_dataset)"


def unseen_split(trained: list[str], data_dir: Path) -> tuple[dict[str, list[Path]], str]:
    """{class: sorted images} for the folders of DATA/val (or DATA) not among `trained`."""
    root = data_dir / "val" if (data_dir / "val").is_dir() else data_dir
    known = set(trained)
    split = dict(product_images(root, exclude=known | {"train", "val"}))
    if len(split) < 2:
        raise ValueError(
            f"{root} holds {len(split)} class folder(s) with images that the run was not trained "
            "on; --unseen needs at least 2 (folder-per-product photos of products kept out of fit)"
        )
    return split, f"{root}/<class> (classes not trained on)"


def calibrate_embedder(
    embedder: ImageEmbedder,
    split: dict[str, list[Path]],
    *,
    target_far: float = DEFAULT_TARGET_FAR,
    gallery_shots: int = DEFAULT_GALLERY_SHOTS,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed a {class: validation images} split and calibrate on it."""
    if not split:
        raise ValueError(
            "no validation images to calibrate on (a run fitted with --val-split 0 on a folder "
            "without val/ has none): pass --data DIR whose val/<class> folders hold 2+ photos of "
            "the run's classes, or --unseen with photos of classes it was not trained on"
        )
    paths = [p for ps in split.values() for p in sorted(ps)]
    labels = [c for c, ps in split.items() for _ in ps]
    emb = embedder.embed_paths(paths, progress=progress, label="calibration images")
    return leave_class_out_threshold(
        emb, labels, target_far=target_far, gallery_shots=gallery_shots
    )


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a calibration result."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def calibrate_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    target_far: float = DEFAULT_TARGET_FAR,
    gallery_shots: int = DEFAULT_GALLERY_SHOTS,
    unseen: bool = False,
    write: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate a RUN_DIR's extractor and (by default) write config.json["threshold"]."""
    from .run import read_run_config, write_run_config

    run_dir = Path(run_dir)
    if gallery_shots < 1:  # checked before the slow embedding
        raise ValueError(f"--shots must be at least 1, got {gallery_shots}")
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"--target-far must be within [0, 1], got {target_far}")
    cfg = read_run_config(run_dir)
    split, source = calibration_split(cfg, data_dir, unseen=unseen)
    embedder = KerasEmbedder.from_path(run_dir)
    result = calibrate_embedder(
        embedder, split, target_far=target_far, gallery_shots=gallery_shots, progress=progress
    )
    threshold = public(result)
    threshold["data"] = source
    threshold["classes"] = "not trained on" if unseen else "trained on"
    threshold["created"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if write:
        cfg = read_run_config(run_dir)  # re-read: nothing else in it may be lost
        cfg["threshold"] = threshold
        write_run_config(run_dir, cfg)
        logger.info("wrote threshold %.4f to %s/config.json", threshold["value"], run_dir)
    result.update(threshold)
    return result


def summary_line(t: dict[str, Any]) -> str:
    return (
        f"threshold {t['value']:.4f} for target FAR {t['target_far']:.3g}: achieved FAR "
        f"{t['achieved_far']:.4f} on {t['n_impostor']} impostor probes, genuine accept rate "
        f"{t['genuine_accept_rate']:.3f} on {t['n_genuine']} ({t['n_classes']} classes, "
        f"{t['gallery_shots']} gallery shots; leave-class-out AUROC {t['auroc']:.3f})"
    )


# --- CLI -----------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `calibrate` on the `python -m training` sub-command parser."""
    p = subparsers.add_parser(
        "calibrate",
        help="pick the unknown-product threshold for a target false-accept rate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(p)
    return p


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="RUN_DIR written by `python -m training fit`")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder (default: the one recorded in config.json); DATA/val/<class> is used "
        "when it exists",
    )
    p.add_argument(
        "--unseen",
        action="store_true",
        help="calibrate on the classes in DATA/val (or DATA) that the run was not trained on "
        "(products kept out of fit): the operating point of new products",
    )
    p.add_argument("--target-far", type=float, default=DEFAULT_TARGET_FAR)
    p.add_argument(
        "--shots",
        type=int,
        default=DEFAULT_GALLERY_SHOTS,
        help="enrollment shots per class in the calibration gallery (default 4)",
    )
    p.add_argument("--dry-run", action="store_true", help="print, do not write config.json")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if not 0.0 < args.target_far < 1.0:
        raise ValueError(f"--target-far must be between 0 and 1, got {args.target_far}")
    result = calibrate_run(
        args.run_dir,
        args.data,
        target_far=args.target_far,
        gallery_shots=args.shots,
        unseen=args.unseen,
        write=not args.dry_run,
    )
    print(summary_line(result))
    if not args.dry_run:
        print(f"written to {args.run_dir}/config.json [threshold]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__)
    configure_parser(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
