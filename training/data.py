"""Finding, decoding and feeding the training images.

Layouts: DATA_DIR/<class>/*.jpg (a stratified validation split is drawn), or DATA_DIR/train/<class>/
and DATA_DIR/val/<class>/ (other sub-trees such as test/ are ignored). Images are decoded once with
the device's own decoder (`device.images.load_image`, BGR) and resized with the device's own
preprocessing (`device.preprocess.resize_rgb`, RGB, area), kept in memory as uint8, and fed through a
tf.data pipeline that augments whole batches at once (one projective warp for crop/zoom, shift and
rotation; brightness/contrast; optional flips).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle import InputSpec
from device.folders import is_hidden, product_dirs
from device.images import IMAGE_SUFFIXES, load_image
from device.preprocess import resize_rgb

from .config import AugmentParams

logger = logging.getLogger(__name__)

Item = tuple[Path, int]
MIN_IMAGES_PER_CLASS = 2


@dataclass
class Dataset:
    """Files of a training set: (path, label index) pairs, label i naming classes[i]."""

    train: list[Item]
    val: list[Item]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    data_dir: Path = Path()
    layout: str = "folders"  # "folders" (split drawn here) or "train/val"

    def skipped_strings(self) -> list[str]:
        return [f"{p}: {reason}" for p, reason in self.skipped]


@dataclass
class Arrays:
    """Decoded images: uint8 (N, H, W, 3) RGB and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


def parse_classes(spec: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`--classes`: comma-separated names, a text file with one class per line ('#' comments), or a
    JSON file holding a list or a protocol with "train_classes"."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        names = [str(s).strip() for s in spec]
    else:
        path = Path(spec)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                data = json.loads(text)
                if isinstance(data, dict):
                    if "train_classes" not in data:
                        raise ValueError(
                            f"{path}: a JSON object needs a 'train_classes' list (protocol.json), "
                            f"found keys {sorted(data)}"
                        )
                    data = data["train_classes"]
                if not isinstance(data, list):
                    raise ValueError(f"{path}: expected a JSON list of class names")
                names = [str(s).strip() for s in data]
            else:
                names = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        elif os.sep in spec or spec.endswith((".txt", ".json")):
            raise ValueError(f"--classes {spec}: no such file")
        else:
            names = [s.strip() for s in spec.split(",")]
    names = [n for n in names if n]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"--classes lists {', '.join(dupes)} more than once")
    if not names:
        raise ValueError(f"--classes {spec!r} selects no class")
    return tuple(names)


def _class_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in sorted(folder.iterdir()):
        if is_hidden(p) or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            skipped.append((p, "not an image file (unknown extension)"))
    return images, skipped


def _class_dirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in product_dirs(root)}


def _has_class_dirs(root: Path) -> bool:
    return root.is_dir() and bool(_class_dirs(root))


def scan_dataset(
    data_dir: str | Path,
    classes: Sequence[str] | str | None = None,
    *,
    val_split: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """List the images of DATA_DIR (no decoding). Raises ValueError, saying what to fix, for an
    empty or missing folder, a single class, an unknown class in `classes`, or a class with fewer
    than 2 images."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(
            f"data folder {root} does not exist (give a folder with one sub-folder per class)"
        )
    wanted = parse_classes(classes)
    split_layout = _has_class_dirs(root / "train")
    train_root = root / "train" if split_layout else root
    dirs = _class_dirs(train_root)
    if not dirs:
        raise ValueError(
            f"{root} is empty: expected one sub-folder per class holding its images "
            "(DATA_DIR/<class>/*.jpg), or train/ and val/ sub-trees of that shape"
        )
    if wanted is not None:
        unknown = [c for c in wanted if c not in dirs]
        if unknown:
            raise ValueError(
                f"unknown class(es) in --classes: {', '.join(unknown)}; {train_root} has "
                f"{len(dirs)} classes, e.g. {', '.join(list(dirs)[:5])}"
            )
        names = list(wanted)
    else:
        names = list(dirs)
    if len(names) < 2:
        raise ValueError(
            f"only one class ({names[0]}) found in {train_root}: an embedding is learnt by telling "
            "classes apart, give at least 2 class folders"
        )
    skipped: list[tuple[Path, str]] = []
    per_class: dict[str, list[Path]] = {}
    for name in names:
        files, bad = _class_files(dirs[name])
        per_class[name] = files
        skipped += bad
    _check_counts({n: len(f) for n, f in per_class.items()}, train_root)

    train: list[Item] = []
    val: list[Item] = []
    if split_layout and (root / "val").is_dir():
        val_dirs = _class_dirs(root / "val")
        for label, name in enumerate(names):
            train += [(p, label) for p in per_class[name]]
            if name in val_dirs:
                files, bad = _class_files(val_dirs[name])
                skipped += bad
                val += [(p, label) for p in files]
        layout = "train/val"
    else:
        rng = np.random.default_rng(seed)
        for label, name in enumerate(names):
            files = list(per_class[name])
            n_val = 0
            if val_split > 0:
                n_val = min(len(files) - 1, max(1, round(len(files) * val_split)))
            order = rng.permutation(len(files))
            val += [(files[i], label) for i in sorted(order[:n_val])]
            train += [(files[i], label) for i in sorted(order[n_val:])]
        layout = "folders"
    return Dataset(train, val, names, skipped, root, layout)


def _check_counts(counts: dict[str, int], where: Path) -> None:
    few = {n: c for n, c in counts.items() if c < MIN_IMAGES_PER_CLASS}
    if few:
        listed = ", ".join(f"{n} ({c})" for n, c in few.items())
        raise ValueError(
            f"class(es) with fewer than {MIN_IMAGES_PER_CLASS} usable images in {where}: {listed}. "
            "Add photos, or leave the class out (remove its folder or use --classes); when the "
            "validation split took the class's other photos, --val-split 0 keeps them all"
        )


class _Progress:
    """A decoding counter: an updating line on a terminal, a log line every ~10% otherwise."""

    def __init__(self, total: int, what: str, enabled: bool) -> None:
        self.total, self.what, self.enabled = total, what, enabled
        self.tty = sys.stderr.isatty()
        self.done = 0
        self.next_log = max(1, total // 10)
        self.start = time.monotonic()
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self._step()

    def _step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.tty:
            if self.done % 20 == 0 or self.done == self.total:
                print(
                    f"\r{self.what}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True
                )
                if self.done == self.total:
                    print(file=sys.stderr)
        elif self.done >= self.next_log or self.done == self.total:
            logger.info("%s: %d/%d", self.what, self.done, self.total)
            self.next_log = self.done + max(1, self.total // 10)

    def finish(self) -> None:
        if self.enabled:
            logger.info(
                "%s: %d images in %.1f s", self.what, self.done, time.monotonic() - self.start
            )


def decode_items(
    items: Sequence[Item],
    size: int,
    *,
    what: str = "decoding",
    progress: bool = True,
    workers: int | None = None,
) -> tuple[Arrays, list[tuple[Path, str]]]:
    """Decode and resize every image once (device decoder, RGB, area resize to size x size).
    Unreadable files are returned as (path, reason), not raised."""
    spec = InputSpec(height=size, width=size, color_order="RGB", resize="area")
    bar = _Progress(len(items), what, progress)

    def one(item: Item) -> np.ndarray | str:
        try:
            out = resize_rgb(load_image(item[0]), spec)
        except ValueError as exc:
            out = str(exc)
        bar.step()
        return out

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV releases the GIL
        results = list(pool.map(one, items))
    bar.finish()
    images = np.zeros((sum(isinstance(r, np.ndarray) for r in results), size, size, 3), np.uint8)
    labels = np.zeros((len(images),), np.int32)
    skipped: list[tuple[Path, str]] = []
    j = 0
    for (path, label), res in zip(items, results, strict=True):
        if isinstance(res, np.ndarray):
            images[j] = res
            labels[j] = label
            j += 1
        else:
            skipped.append((path, res))
    return Arrays(images, labels), skipped


def check_decoded(arrays: Arrays, classes: Sequence[str], where: Path) -> None:
    counts = np.bincount(arrays.labels, minlength=len(classes))
    _check_counts({c: int(counts[i]) for i, c in enumerate(classes)}, where)


# ---- tf.data ---------------------------------------------------------------------------------


def augment_batch(images: Any, out_size: int, params: AugmentParams) -> Any:
    """uint8 (N, L, L, 3) -> float32 (N, S, S, 3) in 0..255: random crop/zoom, shift, rotation
    (one projective warp, reflect padding), optional flip, brightness and contrast, optional
    per-channel gains, under-exposure, random erasing and low resolution."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    n = tf.shape(x)[0]
    side = tf.cast(tf.shape(x)[1], tf.float32)
    s = float(out_size)
    u = tf.random.uniform([n], params.zoom[0], params.zoom[1])
    log_r = math.log(params.aspect)
    r = tf.exp(tf.random.uniform([n], -log_r, log_r))
    cw, ch = side * u * tf.sqrt(r), side * u / tf.sqrt(r)
    cx = side / 2 + tf.random.uniform([n], -1.0, 1.0) * tf.maximum(side - cw, 0.0) / 2
    cy = side / 2 + tf.random.uniform([n], -1.0, 1.0) * tf.maximum(side - ch, 0.0) / 2
    theta = tf.random.uniform([n], -1.0, 1.0) * math.radians(params.rotation_deg)
    sx, sy = cw / s, ch / s
    if params.flip:
        sx = sx * tf.where(tf.random.uniform([n]) < 0.5, -1.0, 1.0)
    c, si = tf.cos(theta), tf.sin(theta)
    a0, a1, b0, b1 = c * sx, -si * sy, si * sx, c * sy
    a2 = cx - (a0 + a1) * s / 2
    b2 = cy - (b0 + b1) * s / 2
    zeros = tf.zeros([n])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant([out_size, out_size], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.random.uniform([n, 1, 1, 1], params.contrast[0], params.contrast[1])
    bright = tf.random.uniform([n, 1, 1, 1], -params.brightness, params.brightness)
    x = (x - mean) * contrast + mean + bright
    if params.colour > 0:
        gains = tf.random.uniform([n, 1, 1, 3], 1.0 - params.colour, 1.0 + params.colour)
        x = x * gains
    if params.erase > 0:
        x = _erase(x, n, s, params.erase)
    x = tf.clip_by_value(x, 0.0, 255.0)
    if params.dark > 0:
        # On the clipped image: a darker photo of everything above, hand and label included
        # (only --aug-lowres's blur comes after, and it keeps the levels). Log-uniform: every
        # ratio of gains equally likely (median sqrt(0.2 * 0.7)).
        lo, hi = (math.log(g) for g in params.dark_gain)
        gain = tf.exp(tf.random.uniform([n, 1, 1, 1], lo, hi))
        x = tf.where(tf.random.uniform([n, 1, 1, 1]) < params.dark, x * gain, x)
    if params.lowres > 0:
        x = _lowres(x, n, out_size, params.lowres, params.lowres_scale)
    return x


def _lowres(x: Any, n: Any, out_size: int, p: float, scale: tuple[float, float]) -> Any:
    """With probability p per image, the image shrunk (area-averaged) to a side drawn
    log-uniformly from `scale` x out_size and enlarged back (bilinear): the blur of a product
    that fills few camera pixels. One small side per batch (a resize takes one size)."""
    import tensorflow as tf

    lo, hi = (math.log(f * out_size) for f in scale)
    side = tf.cast(tf.round(tf.exp(tf.random.uniform([], lo, hi))), tf.int32)
    side = tf.maximum(side, 2)
    small = tf.image.resize(x, tf.stack([side, side]), method="area")
    back = tf.image.resize(small, [out_size, out_size], method="bilinear")
    return tf.where(tf.random.uniform([n, 1, 1, 1]) < p, back, x)


def _erase(x: Any, n: Any, s: float, p: float) -> Any:
    """With probability p per image, one rectangle of 2-25 % of the area (aspect 0.3-3.3) filled
    with one random grey level (random erasing, Zhong et al. 2017)."""
    import tensorflow as tf

    area = tf.random.uniform([n], 0.02, 0.25) * s * s
    log_r = tf.random.uniform([n], math.log(0.3), math.log(1 / 0.3))
    w = tf.minimum(tf.sqrt(area * tf.exp(log_r)), s)
    h = tf.minimum(tf.sqrt(area / tf.exp(log_r)), s)
    x0 = tf.random.uniform([n]) * (s - w)
    y0 = tf.random.uniform([n]) * (s - h)
    grid = tf.range(s, dtype=tf.float32) + 0.5
    inside_x = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
    inside_y = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    applied = tf.random.uniform([n]) < p
    mask = inside_y[:, :, None] & inside_x[:, None, :] & applied[:, None, None]
    fill = tf.random.uniform([n, 1, 1, 1], 0.0, 255.0)
    return tf.where(mask[..., None], fill, x)


def _options(shard: bool = True) -> Any:
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    opts = tf.data.Options()
    # In-memory tensors: shard by element across workers (MultiWorkerMirroredStrategy), unless
    # the pipeline shards itself (`worker_train_dataset`): then TensorFlow must not shard again.
    opts.experimental_distribute.auto_shard_policy = policy.DATA if shard else policy.OFF
    return opts


def train_pipeline(
    arrays: Arrays,
    out_size: int,
    batch_size: int,
    *,
    augment: bool = True,
    params: AugmentParams | None = None,
    seed: int = 0,
) -> Any:
    """Shuffled, batched, augmented (in parallel), prefetched tf.data.Dataset of (x, y)."""
    import tensorflow as tf

    n = len(arrays.labels)
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=n >= 2 * batch_size)
    ds = ds.map(
        _batch_fn(out_size, augment, params),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _batch_fn(
    out_size: int, augment: bool, params: AugmentParams | None
) -> Callable[[Any, Any], Any]:
    """uint8 batch -> float32 model input at `out_size`: augmented, or just resized."""
    import tensorflow as tf

    params = params or AugmentParams()
    fn: Callable[[Any, Any], Any]
    if augment:

        def fn(x: Any, y: Any) -> Any:
            return augment_batch(x, out_size, params), y
    else:

        def fn(x: Any, y: Any) -> Any:
            x = tf.image.resize(tf.cast(x, tf.float32), (out_size, out_size), method="area")
            return x, y

    return fn


def multiworker_pipelines(
    strategy: Any,
    train: Arrays,
    val: Arrays | None,
    out_size: int,
    global_batch: int,
    *,
    augment: bool = True,
    params: AugmentParams | None = None,
    seed: int = 0,
) -> tuple[Any, int, Any]:
    """(train, steps per epoch, validation or None) for MultiWorkerMirroredStrategy, built on each
    worker by `strategy.distribute_datasets_from_function`.

    Training: every worker holds all images and shuffles them with the same seed, so the order is
    the same everywhere; worker k keeps every n-th image from position k (disjoint shards), batched
    at the per-replica size (global batch / replicas). The stream repeats and an epoch is a fixed
    number of global steps, the same on every worker (a worker running one step more than the
    others would wait for them forever). Validation: every worker evaluates ALL validation images
    and the loss is averaged over the workers, so every worker gets the same val_loss exactly."""
    import tensorflow as tf

    steps = max(1, math.ceil(len(train.labels) / global_batch))

    def train_fn(ctx: Any) -> Any:
        return worker_train_dataset(
            train, ctx, out_size, global_batch, augment=augment, params=params, seed=seed
        )

    def val_fn(ctx: Any) -> Any:
        assert val is not None
        ds = tf.data.Dataset.from_tensor_slices((val.images, val.labels))
        ds = ds.batch(ctx.get_per_replica_batch_size(global_batch))
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
        return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(shard=False))

    train_ds = strategy.distribute_datasets_from_function(train_fn)
    has_val = val is not None and len(val.labels) > 0
    val_ds = strategy.distribute_datasets_from_function(val_fn) if has_val else None
    return train_ds, steps, val_ds


def eval_pipeline(arrays: Arrays, batch_size: int) -> Any:
    """Batched float32 (x, y) of images already at the model's input size (device-resized)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels)).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def worker_train_dataset(
    arrays: Arrays,
    ctx: Any,
    out_size: int,
    global_batch: int,
    *,
    augment: bool = True,
    params: AugmentParams | None = None,
    seed: int = 0,
) -> Any:
    """One worker's endless training stream for `multiworker_pipelines`; `ctx` is the
    tf.distribute.InputContext saying which input pipeline this is out of how many."""
    import tensorflow as tf

    n = len(arrays.labels)
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    ds = ds.batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
    ds = ds.map(
        _batch_fn(out_size, augment, params),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(shard=False))
