"""`fit`: data -> staged fine-tuning -> RUN_DIR (extractor.keras, model.keras, config.json,
history.csv, curves.png). The CLI's `fit` is a thin layer over this."""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from device.files import replace_dir

from .config import FitConfig, stage_plan
from .data import (
    check_decoded,
    decode_items,
    eval_pipeline,
    multiworker_pipelines,
    scan_dataset,
    train_pipeline,
)
from .run import (
    CONFIG_FILE,
    CURVES_FILE,
    EXTRACTOR_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILES,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    SAMPLES_FILE,
    staging_dir,
    write_run_config,
)

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "stage",
    "unfrozen",
    "lr",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "distill_distance",  # with --distill (training/distill.py)
    "val_distill_distance",
    "time_s",
)


@dataclass
class FitResult:
    run_dir: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_value: float | None  # best `monitor` (val_loss, or loss without validation)
    monitor: str
    extractor: Any  # keras.Model
    written: bool = True  # False on a non-chief worker of multi-worker training: nothing written


def fit(
    data_dir: str | Path,
    out_dir: str | Path,
    config: FitConfig,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> FitResult:
    """Train an extractor on DATA_DIR and write RUN_DIR. Every check of the input (folders,
    classes, counts, unreadable files, model settings) happens before the model is built.

    The run is written into a staging folder beside RUN_DIR and moved into place at the end, so
    an interrupted or failed fit leaves nothing half-written, and an old run it would replace
    (--overwrite) stays whole until the new one is complete.

    Multi-worker training (TF_CONFIG): only the chief writes `out_dir`. Another worker runs the
    same steps, saving included, into a temporary folder it removes, and ignores `out_dir`."""
    t_start = time.monotonic()
    out = Path(out_dir)
    from .strategy import read_cluster

    cluster = read_cluster() if config.strategy == "multiworker" else None
    if cluster is not None and not cluster.is_chief:
        scratch = Path(tempfile.mkdtemp(prefix="prodrec-worker-"))
        try:
            result = _fit(data_dir, scratch, config, progress, t_start)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result.written = False
        return result
    _check_out(out, Path(data_dir), overwrite)
    staging = staging_dir(out)
    try:
        result = _fit(data_dir, staging, config, progress, t_start)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s in %.0f s", out, time.monotonic() - t_start)
    result.run_dir = out
    return result


def _check_out(out: Path, data_dir: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if (out / CONFIG_FILE).exists():
        if not overwrite:
            raise ValueError(
                f"{out} already holds a training run: choose another --out or pass --overwrite"
            )
        # --overwrite replaces the run's own files; anything else kept there (a bundle, reports,
        # photos) would go with the folder.
        others = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
        if others:
            raise ValueError(
                f"--out {out} holds more than a training run ({', '.join(others[:5])}): move "
                "those elsewhere first, or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        # --overwrite replaces a run, never a folder of something else.
        raise ValueError(f"--out {out} holds files but no training run: give another --out")
    if data_dir.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the data folder {data_dir} is inside --out {out}: choose another --out")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"--out {out} is inside the data folder {data_dir}: the next fit would take it for a "
            "class; write the run elsewhere"
        )


def _fit(
    data_dir: str | Path,
    run_dir: Path,
    config: FitConfig,
    progress: bool,
    t_start: float,
) -> FitResult:
    dataset = scan_dataset(data_dir, config.classes, val_split=config.val_split, seed=config.seed)
    n_cls = len(dataset.classes)
    logger.info(
        "%s: %d classes, %d training and %d validation images (%s layout)",
        dataset.data_dir,
        n_cls,
        len(dataset.train),
        len(dataset.val),
        dataset.layout,
    )

    import tensorflow as tf

    from .heads import make_loss
    from .keras_multiworker import multiworker_fit
    from .model import build_extractor, build_training_model, is_pretrained, set_backbone_trainable
    from .plots import plot_curves, plot_samples
    from .strategy import ClusterError, describe_collective_failure, make_strategy, read_cluster

    keras.utils.set_random_seed(config.seed)
    size = config.input_size
    stored = round(size * config.decode_scale) if config.augment else size
    train_arr, bad_train = decode_items(
        dataset.train, stored, what="decoding training images", progress=progress
    )
    val_arr, bad_val = decode_items(
        dataset.val, size, what="decoding validation images", progress=progress
    )
    skipped = dataset.skipped + bad_train + bad_val
    if skipped:
        logger.warning(
            "skipped %d unreadable or non-image file(s):\n  %s",
            len(skipped),
            "\n  ".join(f"{p}: {r}" for p, r in skipped),
        )
    check_decoded(train_arr, dataset.classes, dataset.data_dir)

    strategy = make_strategy(config.strategy, cluster_timeout=config.cluster_timeout)
    cluster = read_cluster() if config.strategy == "multiworker" else None
    multi = cluster is not None and cluster.num_workers > 1
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = config.batch_size * replicas
    params = config.augment_params()
    has_val = len(val_arr.labels) > 0
    steps_per_epoch: int | None = None  # one pass over the data, unless multi-worker
    if multi:
        train_ds, steps_per_epoch, val_ds = multiworker_pipelines(
            strategy,
            train_arr,
            val_arr if has_val else None,
            size,
            global_batch,
            augment=config.augment,
            params=params,
            seed=config.seed,
        )
    else:
        train_ds = train_pipeline(
            train_arr, size, global_batch, augment=config.augment, params=params, seed=config.seed
        )
        val_ds = eval_pipeline(val_arr, global_batch) if has_val else None
    monitor = "val_loss" if has_val else "loss"
    pretrained = is_pretrained(config.weights)

    with strategy.scope():
        extractor = build_extractor(
            input_size=size,
            alpha=config.alpha,
            embedding_dim=config.embedding_dim,
            weights=config.weights,
            dropout=config.dropout,
        )
        model = build_training_model(extractor, config.head, n_cls)
        # What is compiled and trained: `model` itself, or with --distill a model sharing its
        # layers plus a frozen copy of the starting backbone (only `model` is saved).
        trainer = model
        if config.distill > 0:
            from .distill import build_distill_trainer

            trainer = build_distill_trainer(model, extractor, config.distill)
        l2sp_values = 0
        if config.l2sp > 0:
            from .l2sp import attach_l2sp

            l2sp_values = attach_l2sp(extractor, config.l2sp)
            logger.info("L2-SP: %d backbone values anchored at their starting weights", l2sp_values)

    run_dir.mkdir(parents=True, exist_ok=True)
    keeper = _BestWeights(monitor)  # one across stages: the best epoch of the whole run wins
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0

    plan = stage_plan(config)
    history: list[dict[str, Any]] = []
    epoch = 0
    stages_run: list[dict[str, Any]] = []
    for i, (fraction, n_epochs, lr) in enumerate(plan):
        n_trainable = set_backbone_trainable(extractor, fraction, freeze_bn=pretrained)
        with strategy.scope():
            trainer.compile(
                optimizer=keras.optimizers.Adam(learning_rate=lr * replicas),
                loss=make_loss(
                    config.head,
                    config.resolved_scale,
                    config.resolved_margin,
                    easy_margin=config.easy_margin,
                    sphereface_lambda=config.sphereface_lambda,
                ),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
        logger.info(
            "stage %d/%d: backbone %s (%d trainable backbone weights), lr %.2g, epochs %d-%d",
            i + 1,
            len(plan),
            "frozen" if fraction <= 0 else f"top {fraction:.0%} of blocks unfrozen",
            n_trainable,
            lr * replicas,
            epoch + 1,
            epoch + n_epochs,
        )
        callbacks = [
            keeper,
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                factor=config.lr_factor,
                patience=config.lr_patience,
                min_lr=lr * replicas * 1e-2,
                verbose=1 if progress else 0,
            ),
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=config.early_stopping_patience,
                verbose=1 if progress else 0,
            ),
            _Recorder(history, stage=i, unfrozen=fraction),
        ]
        try:
            with multiworker_fit(trainer, strategy) if multi else nullcontext():
                h = trainer.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=epoch + n_epochs,
                    initial_epoch=epoch,
                    steps_per_epoch=steps_per_epoch,
                    callbacks=callbacks,
                    verbose=verbose,
                    shuffle=False,  # the tf.data pipeline shuffles
                )
        except tf.errors.OpError as exc:
            if cluster is None or not multi:
                raise
            raise ClusterError(
                describe_collective_failure(exc, cluster, config.cluster_timeout)
            ) from exc
        ran = len(h.epoch)
        stages_run.append(
            {
                "stage": i,
                "unfrozen_fraction": fraction,
                "lr": lr * replicas,
                "epochs_planned": n_epochs,
                "epochs_run": ran,
                "trainable_backbone_weights": n_trainable,
            }
        )
        epoch += ran

    best_epoch = keeper.best_epoch
    if keeper.weights is not None:
        trainer.set_weights(keeper.weights)
        logger.info(
            "restored the best weights: epoch %s, %s %.4f", best_epoch, monitor, keeper.best
        )
    best = keeper.best
    if config.l2sp > 0:
        from .l2sp import detach_l2sp

        detach_l2sp(extractor)  # the run's extractor carries no anchors
    bn_recalibration = None
    if not pretrained:
        bn_recalibration = _recalibrate_batchnorm(extractor, train_arr.images, size, global_batch)

    fingerprint = weights_sha256(extractor)
    if cluster is not None:
        # Every worker logs it: equal on all workers = they ended with the same model.
        logger.info("%s: final extractor weights sha256 %s", cluster.name, fingerprint)
    run_cfg = _run_config(config, dataset, train_arr, val_arr, skipped, replicas, global_batch)
    run_cfg["training"].update(
        {
            "stages": stages_run,
            "epochs_run": epoch,
            "monitor": monitor,
            "best_epoch": best_epoch,
            "best_" + monitor: best,
            "time_s": round(time.monotonic() - t_start, 1),
            "bn_recalibration": bn_recalibration,
            "l2sp_anchored_values": l2sp_values,
            "extractor_weights_sha256": fingerprint,
            "workers": cluster.num_workers if cluster is not None else 1,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
    )
    extractor.save(run_dir / EXTRACTOR_FILE)
    model.save(run_dir / MODEL_FILE)
    write_history(history, run_dir / HISTORY_FILE)
    if config.augment:
        x, y = next(iter(train_pipeline(train_arr, size, 16, params=params, seed=config.seed)))
        plot_samples(x.numpy(), y.numpy(), dataset.classes, run_dir / SAMPLES_FILE)
    plot_curves(
        history,
        run_dir / CURVES_FILE,
        title=f"{config.head}, MobileNetV2 {config.alpha} / {size} px",
    )
    write_run_config(run_dir, run_cfg)
    return FitResult(run_dir, run_cfg, history, best_epoch, best, monitor, extractor)


def _run_config(
    config: FitConfig,
    dataset: Any,
    train_arr: Any,
    val_arr: Any,
    skipped: list[tuple[Path, str]],
    replicas: int,
    global_batch: int,
) -> dict[str, Any]:
    from .model import is_pretrained

    size = config.input_size
    training = config.to_dict()
    for key in (
        "alpha",
        "input_size",
        "embedding_dim",
        "weights",
        "dropout",
        "head",
        "scale",
        "margin",
    ):
        training.pop(key, None)
    training.update(
        {
            "replicas": replicas,
            "global_batch_size": global_batch,
            "lr_scaling": "linear in replicas (lr x replicas)",
            "optimizer": "adam",
            "augmentation": {
                "enabled": config.augment,
                **(asdict(config.augment_params()) if config.augment else {}),
            },
        }
    )
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "model": {
            "backbone": "mobilenet_v2",
            "alpha": config.alpha,
            "input_size": size,
            "embedding_dim": config.embedding_dim,
            "head": config.head,
            "scale": config.resolved_scale,
            "margin": config.resolved_margin,
            "dropout": config.dropout,
            "weights": config.weights,
            "backbone_batchnorm": (
                "frozen: inference mode, pretrained statistics and parameters kept"
                if is_pretrained(config.weights)
                else "trained (no pretrained weights); moving statistics re-estimated over the "
                "un-augmented training images after training (training.bn_recalibration)"
            ),
        },
        "preprocessing": {
            "input_size": [size, size],
            "color_order": "RGB",
            "resize": "area",
            "pixel_range": [0, 255],
            "normalization": "inside-model: x/127.5 - 1",
        },
        "classes": list(dataset.classes),
        "training": training,
        "data": {
            "data_dir": str(Path(dataset.data_dir).resolve()),
            "layout": dataset.layout,
            "n_classes": len(dataset.classes),
            "n_train": len(train_arr.labels),
            "n_val": len(val_arr.labels),
            "n_skipped": len(skipped),
            "skipped": [f"{p}: {r}" for p, r in skipped],
        },
        "threshold": None,
    }


def _recalibrate_batchnorm(
    extractor: Any, images: Any, size: int, batch_size: int
) -> dict[str, Any]:
    """BN recalibration of a from-scratch extractor (see `model.recalibrate_batchnorm`) over the
    training images, resized to the input size as the un-augmented pipeline does."""
    import tensorflow as tf

    from .model import recalibrate_batchnorm

    def prepare(batch: Any) -> Any:
        x = tf.cast(batch, tf.float32)
        if batch.shape[1:3] != (size, size):
            x = tf.image.resize(x, (size, size), method="area")
        return x

    info = recalibrate_batchnorm(extractor, images, batch_size, prepare=prepare)
    logger.info(
        "BN recalibration (backbone not pretrained): moving statistics of %d BatchNormalization "
        "layers re-estimated over %d un-augmented training images (%d batches of %d) in %.1f s",
        info["layers"],
        info["images"],
        info["batches"],
        batch_size,
        info["time_s"],
    )
    return info


def weights_sha256(model: Any) -> str:
    """SHA-256 over a model's weights (dtype, shape and bytes of each, in order): equal for two
    models only when every weight is bit-identical."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        a = np.ascontiguousarray(w)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    return path


class _BestWeights(keras.callbacks.Callback):
    """Keeps (in memory) the weights of the epoch with the lowest `monitor` over all stages."""

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or value != value:  # missing or NaN
            return
        if self.best is None or float(value) < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = self.model.get_weights()


class _Recorder(keras.callbacks.Callback):
    """Collects one row per epoch across stages (for history.csv and curves.png)."""

    def __init__(self, rows: list[dict[str, Any]], stage: int, unfrozen: float) -> None:
        super().__init__()
        self.rows, self.stage, self.unfrozen = rows, stage, unfrozen
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        lr = logs.pop("learning_rate", None)
        if lr is None:
            lr = float(self.model.optimizer.learning_rate)
        row = {"epoch": epoch + 1, "stage": self.stage, "unfrozen": self.unfrozen, "lr": float(lr)}
        row.update({k: float(v) for k, v in logs.items() if k in HISTORY_COLUMNS})
        row["time_s"] = round(time.monotonic() - self._t0, 2)
        self.rows.append(row)
