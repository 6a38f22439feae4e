"""`python -m training generalise`: an extractor that keeps ImageNet's generality -> a RUN_DIR.

A fine-tuned extractor's projection head (dense -> BN, 128-d) specialises the embedding to the
training catalogue: on product domains outside it (the evaluation-only sets of bench/domains.py) it
loses to plain ImageNet features (docs/BENCHMARKS.md, "Product domains"). This command builds, from a `training fit` run,
an extractor that drops the head and keeps the backbone's pooled features, with the backbone's
weights interpolated between ImageNet's and the fine-tuned ones (WiSE-FT, Wortsman et al., 2022):

    w = (1 - alpha) * w_imagenet + alpha * w_finetuned        alpha in [0, 1]

alpha 0 is the untrained ImageNet backbone (the reference), alpha 1 the fine-tuned one. The output
is the L2-normalised global-average-pooled feature (1280-d at alpha 1.0 width). The RUN_DIR it
writes is an ordinary one (extractor.keras + config.json), so `training calibrate`, `evaluate` and
`convert` take it as they take a `fit` run.

    python -m training generalise runs/sm224 --wise 0.5 --out runs/sm224-wise50
    python -m training generalise imagenet --input-size 224 --out runs/imagenet224
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from device.files import replace_dir

from .run import (
    CONFIG_FILE,
    EXTRACTOR_FILE,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    read_run_config,
    staging_dir,
    write_run_config,
)

log = logging.getLogger(__name__)

EMBEDDING_KIND = "pooled"


def interpolate(base: list[Any], tuned: list[Any], alpha: float) -> list[Any]:
    """(1 - alpha) * base + alpha * tuned, weight by weight (shapes must agree)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--wise takes a fraction in [0, 1], got {alpha}")
    if len(base) != len(tuned):
        raise ValueError(f"the two backbones differ: {len(base)} against {len(tuned)} weights")
    out = []
    for a, b in zip(base, tuned, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"the two backbones differ: a weight of shape {a.shape} vs {b.shape}")
        out.append((1.0 - alpha) * a + alpha * b)
    return out


def build_pooled_extractor(
    source: str | Path, *, alpha: float, input_size: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """(extractor, facts for config.json). `source` is a RUN_DIR or "imagenet"."""
    import keras

    from .model import (
        POOL_NAME,
        SCALING_NAME,
        L2Normalize,
        build_extractor,
        get_backbone,
        load_extractor,
    )

    if str(source) == "imagenet":
        size = input_size or 224
        run_cfg: dict[str, Any] = {}
        width = 1.0
        tuned = None
    else:
        run_cfg = read_run_config(source)
        model_cfg = run_cfg.get("model") or {}
        size = int(model_cfg.get("input_size") or 0)
        if input_size is not None and input_size != size:
            raise ValueError(f"--input-size {input_size} disagrees with {source} ({size} px)")
        width = float(model_cfg.get("alpha", 1.0))
        tuned = get_backbone(load_extractor(source)).get_weights()
        if model_cfg.get("weights") != "imagenet":
            raise ValueError(
                f"{source} was not trained from ImageNet weights (weights="
                f"{model_cfg.get('weights')!r}): there is nothing to interpolate towards"
            )
    base = build_extractor(input_size=size, alpha=width, weights="imagenet")
    backbone = get_backbone(base)
    if tuned is not None:
        backbone.set_weights(interpolate(backbone.get_weights(), tuned, alpha))
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = base.get_layer(SCALING_NAME)(inputs)
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    outputs = L2Normalize(name="l2_normalize")(x)
    model = keras.Model(inputs, outputs, name="extractor")
    facts = {
        "source_run": None if tuned is None else str(source),
        "wise_alpha": 0.0 if tuned is None else float(alpha),
        "input_size": size,
        "alpha": width,
        "embedding_dim": int(model.output_shape[-1]),
        "run_config": run_cfg,
    }
    return model, facts


def write_generalised_run(
    source: str | Path,
    out: str | Path,
    *,
    alpha: float,
    input_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists: give another --out or --overwrite")
    model, facts = build_pooled_extractor(source, alpha=alpha, input_size=input_size)
    src_cfg = facts.pop("run_config")
    size = facts["input_size"]
    src_head = (src_cfg.get("model") or {}).get("head", "")
    if facts["source_run"] is None:
        name = "imagenet"
    elif alpha == 1.0:
        name = f"pooled-{src_head}"
    else:
        name = f"pooled-{src_head}-wise{round(alpha * 100):02d}"
    cfg = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "model": {
            "backbone": "mobilenet_v2",
            "alpha": facts["alpha"],
            "input_size": size,
            "embedding_dim": facts["embedding_dim"],
            "embedding": EMBEDDING_KIND,
            "head": name,
            "weights": "imagenet",
        },
        "preprocessing": src_cfg.get("preprocessing")
        or {
            "input_size": [size, size],
            "color_order": "RGB",
            "resize": "area",
            "pixel_range": [0, 255],
            "normalization": "inside-model: x/127.5 - 1",
        },
        "classes": src_cfg.get("classes", []),
        "training": src_cfg.get("training", {}),
        "data": src_cfg.get("data", {}),
        "generalise": {
            "method": "WiSE-FT backbone interpolation, pooled features, no projection head",
            "source_run": facts["source_run"],
            "wise_alpha": facts["wise_alpha"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "threshold": None,
    }
    stage = staging_dir(out)
    try:
        model.save(stage / EXTRACTOR_FILE)
        write_run_config(stage / CONFIG_FILE, cfg)
        replace_dir(stage, out)
    except BaseException:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generalise",
        help="pooled-feature extractor with WiSE-FT weights (keeps ImageNet's generality)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="a RUN_DIR from `training fit`, or 'imagenet'")
    p.add_argument("--out", type=Path, required=True, help="RUN_DIR to write")
    p.add_argument(
        "--wise",
        type=float,
        default=0.5,
        help="weight of the fine-tuned backbone, 0 (ImageNet) .. 1 (fine-tuned); default 0.5",
    )
    p.add_argument("--input-size", type=int, help="with 'imagenet': pixels (default 224)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    out = write_generalised_run(
        args.source, args.out, alpha=args.wise, input_size=args.input_size, overwrite=args.overwrite
    )
    print(f"wrote {out} (calibrate it with `python -m training calibrate {out} --data DATA`)")
    return 0
