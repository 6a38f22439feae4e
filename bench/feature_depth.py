"""Where in the backbone the generality lives: pooled features of several depths, and their mix.

    KERAS_HOME=../shared/keras python bench/feature_depth.py SOURCE [SOURCE ...] \\
        [--data ../shared/data] [--sets grocery,coil-dev,grozi-dev] [--mix block_14_add] [--weights 0,0.1,0.2,0.3,0.5,0.8,1] [--cache runs/depth-cache] \\
        [--plot FILE.png]

SOURCE is a RUN_DIR (a `training fit` or `generalise` run) or "imagenet" (the untrained
backbone). For each source and set (a `protocol.json`, 4 enrollment shots per product) every
image is resized as the device does (`device.preprocess.resize_rgb`), run through the Keras float
backbone, and the feature maps of five depths (LAYERS: blocks 12, 14, 15, 16 and the final
`out_relu`) are average-pooled. Each layer's features are centred
on the gallery's own mean (as the device centres, without the shipped prior) and scored alone:
P@1 and leave-class-out AUROC. Then the final layer is mixed with `--mix`:

    mixed = [ sqrt(1 - w) * unit(unit(final) - mu_final),  sqrt(w) * unit(unit(mid) - mu_mid) ]

(mu: the mean of the gallery's unit vectors of that layer)

whose cosine is `(1 - w) * cos_final + w * cos_mid`, for each w of `--weights`.

This is a diagnostic in Keras float, not the device's int8 path (bench/domains.py is that): it
says how the pooled features of each depth trade one product domain for another. coil-dev and
grozi-dev are evaluation data only: a weight read off this table and shipped would be a choice
made on them.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from domains import SETS, checked_sets  # noqa: E402  # the sets, as every set-scoring script

from device.adaptation import centre_vector  # noqa: E402
from device.bundle import sha256_file  # noqa: E402
from device.vectors import centre  # noqa: E402
from training.metrics import p_at_1_and_auroc, product_scores, similarity  # noqa: E402

LAYERS = ("block_12_add", "block_14_add", "block_15_add", "block_16_project_BN", "out_relu")
FINAL = "out_relu"
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)
# The targets (P@1, AUROC) per set, drawn on the plot.
TARGETS = {"grocery": (0.90, 0.92), "coil-dev": (0.995, 0.98), "grozi-dev": (0.96, 0.96)}
BATCH = 32


def centre_on_gallery(enroll: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as unit vectors of (x - mean of the gallery's unit vectors)."""
    mu = centre_vector(enroll, None, 0.0)
    return centre(enroll, mu), centre(query, mu)


def mix(final: np.ndarray, mid: np.ndarray, w: float) -> np.ndarray:
    """Unit rows whose cosine is (1 - w) * cos(final) + w * cos(mid) (both parts unit rows)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"a mixing weight is in [0, 1], got {w}")
    return np.concatenate([np.sqrt(1.0 - w) * final, np.sqrt(w) * mid], axis=1).astype(np.float32)


def score(
    enroll: np.ndarray, enroll_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray
) -> tuple[float, float]:
    """(P@1, leave-class-out AUROC) of cosine matching, each product scored by its best view."""
    products, scores = product_scores(similarity(query, enroll), list(enroll_labels))
    return p_at_1_and_auroc(products, scores, list(query_labels))


def _layer_model(source: str) -> tuple[Any, int]:
    """(Keras model: uint8-range RGB images -> one feature map per layer, input size)."""
    import keras

    from training.generalise import build_pooled_extractor
    from training.model import SCALING_NAME, get_backbone, load_extractor

    if source == "imagenet":
        extractor, _ = build_pooled_extractor("imagenet", alpha=0.0, input_size=224)
    else:
        extractor = load_extractor(source)
    backbone = get_backbone(extractor)
    maps = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in LAYERS])
    inputs = keras.Input(shape=extractor.input_shape[1:], dtype="float32")
    outputs = maps(extractor.get_layer(SCALING_NAME)(inputs))
    return keras.Model(inputs, outputs), int(extractor.input_shape[1])


def _cache_key(source: str, data: Path) -> str:
    """What the features depend on: the model's weights file, the data folder and the layers
    (a run retrained in place, or another --data, is not mistaken for the cached one)."""
    if source == "imagenet":
        model = "imagenet"  # the Keras application's fixed weights file
    else:
        run = Path(source)
        model = sha256_file(run / "extractor.keras" if run.is_dir() else run)
    parts = [model, str(data.resolve()), ",".join(LAYERS)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def extract(source: str, data: Path, sets: list[str], cache: Path) -> dict[str, np.ndarray]:
    """{f"{set}-{e|q}{x-LAYER|y}": array}, cached per model weights, data folder, set and
    protocol file, and layers."""
    key = _cache_key(source, data)
    out: dict[str, np.ndarray] = {}
    missing = []

    def cache_file(name: str) -> Path:
        protocol = sha256_file(data / name / "protocol.json")[:8]
        return cache / f"{key}-{name}-{protocol}.npz"

    for name in sets:
        path = cache_file(name)
        if path.is_file():
            out.update(np.load(path))
        else:
            missing.append(name)
    if not missing:
        return out

    from device.bundle import InputSpec
    from device.files import atomic_path
    from device.images import load_image
    from device.preprocess import resize_rgb
    from training.protocol import read_protocol

    model, size = _layer_model(source)
    spec = InputSpec(height=size, width=size, dtype="float32")
    cache.mkdir(parents=True, exist_ok=True)
    for name in missing:
        proto = read_protocol(data / name / "protocol.json")
        part: dict[str, np.ndarray] = {}
        for tag, split in (("e", proto.enroll), ("q", proto.query)):
            files = [f for fs in split.values() for f in fs]
            started = time.monotonic()
            pooled: list[list[np.ndarray]] = [[] for _ in LAYERS]
            for i in range(0, len(files), BATCH):
                x = np.stack([resize_rgb(load_image(f), spec) for f in files[i : i + BATCH]])
                for acc, fmap in zip(
                    pooled, model(x.astype(np.float32), training=False), strict=True
                ):
                    acc.append(np.asarray(fmap).mean(axis=(1, 2)))
            for layer, acc in zip(LAYERS, pooled, strict=True):
                part[f"{name}-{tag}x-{layer}"] = np.concatenate(acc).astype(np.float32)
            part[f"{name}-{tag}y"] = np.array([p for p, fs in split.items() for _ in fs])
            print(
                f"  {source} {name} {tag}: {len(files)} images in "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
        with atomic_path(cache_file(name)) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **part)  # whole or not at all: an interrupted run caches nothing
        out.update(part)
    return out


def evaluate(
    feats: dict[str, np.ndarray], sets: list[str], mid: str, weights: list[float]
) -> tuple[
    dict[tuple[str, str], tuple[float, float]], dict[tuple[float, str], tuple[float, float]]
]:
    """({(layer, set): (P@1, AUROC)}, {(w, set): (P@1, AUROC)} of the final layer mixed with mid)."""
    by_layer: dict[tuple[str, str], tuple[float, float]] = {}
    centred: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for name in sets:
        ey, qy = feats[f"{name}-ey"], feats[f"{name}-qy"]
        for layer in LAYERS:
            e, q = centre_on_gallery(feats[f"{name}-ex-{layer}"], feats[f"{name}-qx-{layer}"])
            centred[layer, name] = (e, q)
            by_layer[layer, name] = score(e, ey, q, qy)
    by_weight: dict[tuple[float, str], tuple[float, float]] = {}
    for w in weights:
        for name in sets:
            (ef, qf), (em, qm) = centred[FINAL, name], centred[mid, name]
            by_weight[w, name] = score(
                mix(ef, em, w), feats[f"{name}-ey"], mix(qf, qm, w), feats[f"{name}-qy"]
            )
    return by_layer, by_weight


def _cells(results: dict[Any, tuple[float, float]], key: Any, sets: list[str]) -> str:
    return " | ".join(f"{results[key, s][0]:.3f} / {results[key, s][1]:.3f}" for s in sets)


def plot(
    curves: dict[str, dict[tuple[float, str], tuple[float, float]]],
    weights: list[float],
    x_set: str,
    y_set: str,
    mid: str,
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, k, metric in ((axes[0], 0, "P@1"), (axes[1], 1, "AUROC")):
        for i, (source, res) in enumerate(curves.items()):
            xs = [res[w, x_set][k] for w in weights]
            ys = [res[w, y_set][k] for w in weights]
            (line,) = ax.plot(xs, ys, marker="o", label=source)
            for w, x, y in zip(weights, xs, ys, strict=True):
                if w in (weights[0], weights[-1], 0.3):
                    # Sources alternate sides so labels of near points do not overlap.
                    ax.annotate(
                        f"w={w:g}",
                        (x, y),
                        textcoords="offset points",
                        xytext=(6, -4) if i % 2 == 0 else (-36, 4),
                        fontsize=8,
                        color=line.get_color(),
                    )
        for target, draw in ((TARGETS.get(x_set), ax.axvline), (TARGETS.get(y_set), ax.axhline)):
            if target is not None:
                draw(target[k], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{x_set} {metric} (dashed: the issue's target)")
        ax.set_ylabel(f"{y_set} {metric}")
        ax.set_title(f"{metric}: final layer mixed with {mid} (weight w)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sources", nargs="+", help='RUN_DIRs, or "imagenet"')
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--mix", default="block_14_add", choices=[n for n in LAYERS if n != FINAL])
    p.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS))
    p.add_argument("--cache", type=Path, default=ROOT / "runs" / "depth-cache")
    p.add_argument("--plot", type=Path, help="draw the mix's trade between the first and last set")
    args = p.parse_args(argv)
    sets = checked_sets(p, args)
    try:
        weights = [float(w) for w in args.weights.split(",") if w]
    except ValueError:
        p.error(f"--weights takes numbers in [0, 1] separated by commas, got {args.weights!r}")
    if not weights or not all(0.0 <= w <= 1.0 for w in weights):
        p.error(f"--weights takes numbers in [0, 1] separated by commas, got {args.weights!r}")
    for source in args.sources:
        if source != "imagenet" and not (Path(source) / "extractor.keras").is_file():
            p.error(f"{source} is not a RUN_DIR with an extractor.keras (or give imagenet)")

    head = " | ".join(f"{s} P@1 / AUROC" for s in sets)
    print(
        f"`python bench/feature_depth.py {shlex.join(argv if argv is not None else sys.argv[1:])}`"
    )
    curves = {}
    for source in args.sources:
        feats = extract(source, args.data, sets, args.cache)
        by_layer, by_weight = evaluate(feats, sets, args.mix, weights)
        curves[source] = by_weight
        print(f"\n`{source}`, each layer alone (centred on the gallery):\n")
        print(f"| layer | {head} |\n|---|{'---|' * len(sets)}")
        for layer in LAYERS:
            print(f"| {layer} | {_cells(by_layer, layer, sets)} |")
        print(f"\n`{source}`, {FINAL} mixed with {args.mix} (w = the mid layer's weight):\n")
        print(f"| w | {head} |\n|---|{'---|' * len(sets)}")
        for w in weights:
            print(f"| {w:g} | {_cells(by_weight, w, sets)} |")
    if args.plot:
        plot(curves, weights, sets[0], sets[-1], args.mix, args.plot)
        print(f"\n![final layer mixed with {args.mix}]({args.plot})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
