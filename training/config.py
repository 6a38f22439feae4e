"""`FitConfig`: every hyper-parameter of a training run, validated before anything heavy starts."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .heads import get_head, head_names

# The registered heads (training/heads/, one file each) and their published (scale s, margin m).
HEADS = head_names()
STRATEGIES = ("default", "mirrored", "multiworker")
HEAD_DEFAULTS: dict[str, tuple[float | None, float | None]] = {
    name: (get_head(name).default_scale, get_head(name).default_margin) for name in HEADS
}

# Keras ships ImageNet weights for MobileNetV2 only at these input sizes and widths. Other sizes
# start from the 224 px weights, as Keras itself does: convolution weights do not depend on the
# input size, and fine-tuning adapts them.
IMAGENET_SIZES = (96, 128, 160, 192, 224)
IMAGENET_FALLBACK_SIZE = 224
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
MIN_INPUT_SIZE = 32


DARK_GAIN = (0.2, 0.7)  # --aug-dark's range of exposure gains
LOWRES_SCALE = (0.2, 0.7)  # --aug-lowres: the small side, as a fraction of the input size


@dataclass(frozen=True)
class AugmentParams:
    zoom: tuple[float, float] = (0.70, 1.0)  # crop side as a fraction of the stored image side
    aspect: float = 1.1  # crop aspect ratio in [1/aspect, aspect]
    rotation_deg: float = 10.0
    brightness: float = 25.0  # +- pixel levels
    contrast: tuple[float, float] = (0.75, 1.25)
    flip: bool = False
    colour: float = 0.0  # per-channel gain in [1 - colour, 1 + colour]: white balance, tinted light
    erase: float = 0.0  # probability of one random rectangle painted over (occlusion, a hand)
    dark: float = 0.0  # probability of an under-exposed copy: the image times a gain in dark_gain
    dark_gain: tuple[float, float] = DARK_GAIN  # drawn log-uniformly; dim shelves, no flash
    lowres: float = 0.0  # probability of a low-resolution copy: shrunk and enlarged back
    lowres_scale: tuple[float, float] = LOWRES_SCALE  # small crops, distant products: blur


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


def _classes(text: str | None) -> tuple[str, ...] | None:
    from .data import parse_classes  # numpy only; imported when the option is used

    return parse_classes(text)


def cli(
    help: str,
    *,
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    choices: Sequence[str] | None = None,
    negate: bool = False,
    cli_default: Any = ...,
    post: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A FitConfig field's command-line option (`training/cli.py` builds the parser and maps the
    arguments back from these; a field without it is not on the command line).

    flag: the option (default --field-name); type: the argparse type (default: the default's);
    negate: a True-by-default bool switched off by the flag; cli_default: the option's default
    when it is not the field's (None: resolved later); post: converts the parsed value."""
    return {
        "help": help,
        "flag": flag,
        "type": type,
        "choices": choices,
        "negate": negate,
        "cli_default": cli_default,
        "post": post,
    }


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata=cli(help, **kw))


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of `training.fit`. `scale`/`margin` None mean the head's published default.

    Epochs: `epochs` is the TOTAL over all stages. The first `frozen_epochs` train the head and the
    embedding layer with the backbone frozen (at `lr`); the rest is split evenly between the
    `unfreeze` stages, each unfreezing the top fraction of the backbone's blocks (at `finetune_lr`,
    halved at every further stage).

    Each field is written once: its command-line option (`cli`) sits next to it.
    """

    head: str = _opt(
        "arcface",
        "defaults (s, m): " + ", ".join(f"{h} {v}" for h, v in HEAD_DEFAULTS.items()),
        choices=HEADS,
    )
    alpha: float = _opt(1.0, "MobileNetV2 width")
    input_size: int = _opt(160, "pixels")
    embedding_dim: int = _opt(128, "size of the embedding the device stores and matches")
    weights: str | None = _opt(
        "imagenet",
        "imagenet, none, a MobileNetV2 .h5 file, or a RUN_DIR/extractor.keras to start from",
        type=_weights,
    )
    dropout: float = _opt(0.2, "before the embedding layer")
    scale: float | None = _opt(None, "logit scale s (default: the head's)", type=float)
    margin: float | None = _opt(None, "margin m (default: the head's)", type=float)
    easy_margin: bool = _opt(False, "ArcFace: margin only where cos > 0")
    sphereface_lambda: float = _opt(
        5.0,
        "SphereFace: weight of the plain cosine in its softened target (lam*cos + psi)/(1 + lam), "
        "fixed at the paper's final value",
    )
    epochs: int = _opt(12, "TOTAL epochs over all stages (frozen + unfrozen)")
    frozen_epochs: int = _opt(3, "first epochs with the backbone frozen")
    unfreeze: tuple[float, ...] = _opt(
        (0.25, 0.5),
        "fractions of backbone blocks unfrozen (top first), one stage each, sharing the "
        "remaining epochs evenly; 'all' or 'none' (default: 0.25,0.5; 'all' with --weights none, "
        "as a random backbone has nothing to keep frozen)",
        type=_unfreeze,
        cli_default=None,  # resolved from --weights by `unfreeze_default`
    )
    batch_size: int = _opt(32, "per replica")
    lr: float = _opt(1e-3, "learning rate, frozen stage")
    finetune_lr: float = _opt(
        1e-4, "learning rate of the first unfrozen stage (halved each further stage)"
    )
    val_split: float = _opt(0.15, "validation share per class when DATA_DIR has no val/")
    classes: tuple[str, ...] | None = _opt(
        None,
        "a subset: comma-separated names, a file with one per line, or a JSON list / "
        "protocol.json (its train_classes)",
        type=str,
        post=_classes,
    )
    seed: int = _opt(0, "validation split, shuffling, init")
    augment: bool = _opt(True, "no augmentation", flag="--no-augment", negate=True)
    flip: bool = _opt(False, "random horizontal flips (off: packaging text)")
    aug_zoom: float = _opt(
        0.70, "smallest random crop, as a fraction of the image side (1 = no zoom)"
    )
    aug_colour: float = _opt(
        0.0, "random per-channel gain in [1 - x, 1 + x] (white balance, tinted light; 0 = off)"
    )
    aug_erase: float = _opt(
        0.0, "probability of painting one random rectangle over an image (occlusion; 0 = off)"
    )
    aug_dark: float = _opt(
        0.0,
        f"probability of under-exposing an image (all pixels times a gain in {DARK_GAIN[0]:g}-"
        f"{DARK_GAIN[1]:g}: dim shelves, in-store video; 0 = off)",
    )
    aug_lowres: float = _opt(
        0.0,
        f"probability of a low-resolution copy of an image (shrunk to {LOWRES_SCALE[0]:g}-"
        f"{LOWRES_SCALE[1]:g} of the input size and enlarged back: small or distant products, "
        "in-store crops; 0 = off)",
    )
    distill: float = _opt(
        0.0,
        "weight of feature distillation: pulls the pooled backbone features towards those of a "
        "frozen copy of the starting (pretrained) backbone, to keep its generality (0 = off; "
        "training/distill.py)",
    )
    l2sp: float = _opt(
        0.0,
        "L2-SP strength: weight decay of the backbone towards its starting (pretrained) weights, "
        "strength * sum((w - w_start)^2) (0 = off; training/l2sp.py)",
    )
    early_stopping_patience: int = _opt(
        3, "early stopping patience (epochs, per stage)", flag="--patience"
    )
    lr_patience: int = 1
    lr_factor: float = 0.3
    strategy: str = _opt(
        "default",
        "tf.distribute: mirrored (GPUs), multiworker (hosts, TF_CONFIG)",
        choices=STRATEGIES,
    )
    cluster_timeout: float = _opt(
        120.0,
        "multiworker: how long a worker waits for the others to join, and for each exchange "
        "with them while training, before it stops with an error (seconds)",
    )
    decode_scale: float = 1.15

    def __post_init__(self) -> None:
        validate(self)

    @property
    def resolved_scale(self) -> float | None:
        return self.scale if self.scale is not None else HEAD_DEFAULTS[self.head][0]

    @property
    def resolved_margin(self) -> float | None:
        return self.margin if self.margin is not None else HEAD_DEFAULTS[self.head][1]

    def with_(self, **changes: Any) -> FitConfig:
        return replace(self, **changes)

    def augment_params(self) -> AugmentParams:
        return AugmentParams(
            zoom=(self.aug_zoom, 1.0),
            flip=self.flip,
            colour=self.aug_colour,
            erase=self.aug_erase,
            dark=self.aug_dark,
            lowres=self.aug_lowres,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["unfreeze"] = list(self.unfreeze)
        data["classes"] = list(self.classes) if self.classes is not None else None
        data["scale"] = self.resolved_scale
        data["margin"] = self.resolved_margin
        return data


def unfreeze_default(weights: str | None) -> tuple[float, ...]:
    """--unfreeze when not given: the usual stages, or the whole backbone when it starts random."""
    return FitConfig.unfreeze if is_pretrained(weights) else (1.0,)


def is_pretrained(weights: str | None) -> bool:
    return weights is not None and str(weights).lower() != "none"


def imagenet_weight_size(input_size: int) -> int:
    """The input size whose ImageNet weights a backbone of `input_size` starts from."""
    return input_size if input_size in IMAGENET_SIZES else IMAGENET_FALLBACK_SIZE


def validate_backbone(input_size: int, alpha: float, weights: str | None) -> None:
    """Reject MobileNetV2 settings it cannot take, with what to use instead."""
    if not isinstance(input_size, int) or isinstance(input_size, bool):
        raise ValueError(f"input size must be an integer number of pixels, got {input_size!r}")
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(
            f"input size {input_size} is too small: MobileNetV2 needs at least {MIN_INPUT_SIZE} px"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if weights == "imagenet" and alpha not in IMAGENET_ALPHAS:
        raise ValueError(
            f"alpha {alpha} has no ImageNet weights for MobileNetV2: use one of "
            f"{', '.join(map(str, IMAGENET_ALPHAS))}, or --weights none"
        )


def validate(cfg: FitConfig) -> None:
    if cfg.head not in HEADS:
        raise ValueError(f"unknown head {cfg.head!r}: choose one of {', '.join(HEADS)}")
    if cfg.strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}"
        )
    if not cfg.cluster_timeout > 0:
        raise ValueError(f"--cluster-timeout must be > 0 seconds, got {cfg.cluster_timeout}")
    validate_backbone(cfg.input_size, cfg.alpha, cfg.weights)
    if cfg.embedding_dim < 2:
        raise ValueError(f"embedding dim must be >= 2, got {cfg.embedding_dim}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.frozen_epochs < 0:
        raise ValueError(f"frozen epochs must be >= 0, got {cfg.frozen_epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}")
    for f in cfg.unfreeze:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"--unfreeze fractions must be in (0, 1], got {f}")
    if list(cfg.unfreeze) != sorted(cfg.unfreeze):
        raise ValueError(
            f"--unfreeze fractions must increase (top first), got {list(cfg.unfreeze)}"
        )
    if not (cfg.lr > 0 and cfg.finetune_lr > 0):
        raise ValueError("learning rates must be > 0")
    if not 0.0 <= cfg.val_split < 1.0:
        raise ValueError(f"validation split must be in [0, 1), got {cfg.val_split}")
    s, m = cfg.resolved_scale, cfg.resolved_margin
    if s is not None and not s > 0:
        raise ValueError(f"scale must be > 0, got {s}")
    get_head(cfg.head).check_margin(m)
    if not 0.1 <= cfg.aug_zoom <= 1.0:
        raise ValueError(f"--aug-zoom must be in [0.1, 1], got {cfg.aug_zoom}")
    if not 0.0 <= cfg.aug_colour < 1.0:
        raise ValueError(f"--aug-colour must be in [0, 1), got {cfg.aug_colour}")
    if not 0.0 <= cfg.aug_erase <= 1.0:
        raise ValueError(f"--aug-erase is a probability in [0, 1], got {cfg.aug_erase}")
    if not 0.0 <= cfg.aug_dark <= 1.0:
        raise ValueError(f"--aug-dark is a probability in [0, 1], got {cfg.aug_dark}")
    if not 0.0 <= cfg.aug_lowres <= 1.0:
        raise ValueError(f"--aug-lowres is a probability in [0, 1], got {cfg.aug_lowres}")
    # Both pull towards the starting backbone: there must be one worth keeping.
    for flag, value, high, what in (
        ("--distill", cfg.distill, 1000.0, "pulls the features towards the starting backbone's"),
        ("--l2sp", cfg.l2sp, 100.0, "decays the backbone towards its starting weights"),
    ):
        if not 0.0 <= value <= high:
            raise ValueError(f"{flag} is a weight in [0, {high:g}], got {value}")
        if value > 0 and not is_pretrained(cfg.weights):
            raise ValueError(
                f"{flag} {what}: it needs pretrained --weights (imagenet, a .h5 file or a run), "
                "not none"
            )
        if value > 0 and not any(frac > 0 for frac, _, _ in stage_plan(cfg)):
            raise ValueError(
                f"{flag} {what}, but no stage unfreezes the backbone: give --unfreeze and more "
                "--epochs than --frozen-epochs"
            )
    if cfg.decode_scale < 1.0:
        raise ValueError(f"decode scale must be >= 1, got {cfg.decode_scale}")
    if cfg.classes is not None and len(cfg.classes) < 2:
        raise ValueError(
            f"--classes selects {len(cfg.classes)} class(es): an embedding needs at least 2 classes"
        )


def stage_plan(cfg: FitConfig) -> list[tuple[float, int, float]]:
    """[(unfrozen backbone fraction, epochs, learning rate)] for each stage, epochs summing to
    cfg.epochs. Stage 0 (fraction 0.0) is the frozen backbone."""
    frozen = min(cfg.frozen_epochs, cfg.epochs)
    rest = cfg.epochs - frozen
    plan: list[tuple[float, int, float]] = []
    if frozen:
        plan.append((0.0, frozen, cfg.lr))
    stages = list(cfg.unfreeze)
    if rest and not stages:
        plan.append((0.0, rest, cfg.lr))  # nothing to unfreeze: just train longer frozen
        return _merge(plan)
    if rest:
        n = min(len(stages), rest)
        stages = stages[-n:] if n < len(stages) else stages  # too few epochs: keep the deepest
        base, extra = divmod(rest, n)
        for i, frac in enumerate(stages):
            plan.append((frac, base + (1 if i >= n - extra else 0), cfg.finetune_lr * 0.5**i))
    return _merge(plan)


def _merge(plan: list[tuple[float, int, float]]) -> list[tuple[float, int, float]]:
    out: list[tuple[float, int, float]] = []
    for frac, n, lr in plan:
        if out and out[-1][0] == frac and out[-1][2] == lr:
            out[-1] = (frac, out[-1][1] + n, lr)
        elif n > 0:
            out.append((frac, n, lr))
    return out
