"""What is being converted: a RUN_DIR (extractor.keras + config.json) or an extractor.keras file.

Everything the bundle must carry (input size, colour order, resize, classes, threshold) is read
from the run's config.json, never re-typed; without one, the caller must say the colour order."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device.bundle import COLOR_ORDERS, RESIZE_MODES, InputSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
EXTRACTOR_FILE = "extractor.keras"


@dataclass(frozen=True)
class Source:
    extractor_path: Path
    run_dir: Path | None  # the folder whose config.json described the model, if any
    input_size: tuple[int, int] | None  # (height, width); None: taken from the model's shape
    color_order: str
    resize: str
    name: str
    classes: tuple[str, ...] = ()
    embedding_dim: int | None = None  # from config.json: the extractor's output must have it
    threshold: float | None = None
    threshold_info: dict[str, Any] = field(default_factory=dict)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_config(path: Path) -> dict[str, Any]:
    """A RUN_DIR's config.json, format checked (training/run.py: the one reader)."""
    from training.run import read_run_config

    return read_run_config(path)


def _size(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{where}: expected an input size (int or [height, width]), got {value!r}")


def resolve_source(
    src: str | Path,
    *,
    color_order: str | None = None,
    resize: str | None = None,
    input_size: int | None = None,
    name: str | None = None,
) -> Source:
    """Find the extractor and its config. Options override nothing a config.json states: when one is
    given and disagrees with the config, that is an error, not a silent choice."""
    src = Path(src)
    if src.is_dir():
        extractor = src / EXTRACTOR_FILE
        if not extractor.is_file():
            raise ValueError(
                f"{src} holds no {EXTRACTOR_FILE}: give a RUN_DIR written by `python -m training fit` "
                "or the path of an extractor .keras file"
            )
    elif src.is_file():
        if src.suffix != ".keras":
            raise ValueError(f"{src}: expected a RUN_DIR or a .keras extractor file")
        extractor = src
    else:
        raise ValueError(f"{src} does not exist: give a RUN_DIR or an extractor .keras file")

    cfg_path = extractor.parent / CONFIG_FILE
    cfg = read_config(cfg_path) if cfg_path.is_file() else None
    if cfg is None:
        if color_order is None:
            raise ValueError(
                f"no {CONFIG_FILE} beside {extractor}: the bundle must record the colour order the "
                "model was trained on; pass --color-order RGB|BGR (and --input-size if the model has "
                "no fixed input size), or convert the RUN_DIR instead"
            )
        log.warning(
            "no %s beside %s: no classes and no threshold will be recorded in the bundle",
            CONFIG_FILE,
            extractor,
        )
        pre: dict[str, Any] = {}
        model: dict[str, Any] = {}
    else:
        pre = dict(cfg.get("preprocessing") or {})
        model = dict(cfg.get("model") or {})

    size_value = pre.get("input_size", model.get("input_size"))
    size = _size(size_value, f"{cfg_path}: preprocessing.input_size") if size_value else None
    if input_size is not None:
        if size is not None and size != (input_size, input_size):
            raise ValueError(f"--input-size {input_size} disagrees with {cfg_path} ({size})")
        size = (input_size, input_size)

    cfg_order = pre.get("color_order")
    if color_order is not None and cfg_order is not None and color_order != cfg_order:
        raise ValueError(f"--color-order {color_order} disagrees with {cfg_path} ({cfg_order})")
    order = str(cfg_order or color_order or "RGB")
    cfg_resize = pre.get("resize")
    if resize is not None and cfg_resize is not None and resize != cfg_resize:
        raise ValueError(f"--resize {resize} disagrees with {cfg_path} ({cfg_resize})")
    resize_mode = str(cfg_resize or resize or "area")
    if order not in COLOR_ORDERS:
        raise ValueError(f"colour order {order!r} is not one of {list(COLOR_ORDERS)}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize {resize_mode!r} is not one of {list(RESIZE_MODES)}")

    threshold: float | None = None
    threshold_info: dict[str, Any] = {}
    thr = (cfg or {}).get("threshold")
    if isinstance(thr, dict) and thr.get("value") is not None:
        threshold = float(thr["value"])
        threshold_info = {k: v for k, v in thr.items() if k != "value"}
    elif isinstance(thr, (int, float)) and not isinstance(thr, bool):
        threshold = float(thr)
    if cfg is not None and threshold is None:
        log.warning(
            "%s has no calibrated threshold (run `python -m training calibrate %s`); the bundle "
            "will have none and the device must be given one",
            cfg_path,
            extractor.parent,
        )

    classes = tuple(str(c) for c in ((cfg or {}).get("classes") or []))
    return Source(
        extractor_path=extractor,
        run_dir=extractor.parent if cfg is not None else None,
        input_size=size,
        color_order=order,
        resize=resize_mode,
        name=name or _default_name(model, extractor),
        classes=classes,
        embedding_dim=int(model["embedding_dim"])
        if _is_count(model.get("embedding_dim"))
        else None,
        threshold=threshold,
        threshold_info=threshold_info,
    )


def _default_name(model: dict[str, Any], extractor: Path) -> str:
    if model.get("input_size") and model.get("alpha") is not None:
        backbone = str(model.get("backbone", "mobilenet_v2")).replace("mobilenet_v2", "mnv2")
        head = str(model.get("head", "model"))
        return f"{head}-{backbone}-a{model['alpha']}-{model['input_size']}"
    return extractor.parent.name if extractor.name == EXTRACTOR_FILE else extractor.stem


def float_spec(source: Source, model_input_shape: tuple[int | None, ...]) -> InputSpec:
    """The Keras extractor's input spec (float32 raw pixels), checked against the model itself."""
    if len(model_input_shape) != 4 or model_input_shape[-1] != 3:
        raise ValueError(
            f"{source.extractor_path}: expected one image input (None, H, W, 3), got "
            f"{model_input_shape}; is this an extractor written by `training fit`?"
        )
    h, w = model_input_shape[1], model_input_shape[2]
    if source.input_size is None:
        if h is None or w is None:
            raise ValueError(
                f"{source.extractor_path} has no fixed input size and no config.json states one: "
                "pass --input-size"
            )
        size = (int(h), int(w))
    else:
        size = source.input_size
        if (h, w) != (None, None) and (h, w) != size:
            raise ValueError(
                f"{source.extractor_path} takes {h}x{w} inputs but its config says "
                f"{size[0]}x{size[1]}: the RUN_DIR is inconsistent"
            )
    return InputSpec(
        height=size[0],
        width=size[1],
        color_order=source.color_order,
        dtype="float32",
        resize=source.resize,
    )


def load_extractor(path: Path) -> Any:
    """Load the Keras extractor with the project's custom layers registered."""
    try:
        from training.model import load_extractor as _load
    except ImportError:  # training/ not installed beside convert/: plain Keras loading
        import keras

        return keras.saving.load_model(path, compile=False)
    return _load(path)
