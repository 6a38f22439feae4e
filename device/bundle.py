"""The model bundle contract: `model.tflite` + `model.json`.

This module is the single definition of `model.json`. `convert/` builds a `BundleMeta` and writes it
with `write_bundle_meta`; the device reads it with `read_bundle_meta` and nothing else. Whatever both
sides must agree on (input size, colour order, pixel scaling, embedding size, threshold, model
identity) lives here, written once by the converter and read by the device.

A `model.json` looks like:

    {
      "format": "prodrec-bundle", "format_version": 1,
      "name": "arcface-mnv2-a1.0-160", "model_file": "model.tflite", "model_id": "<sha256 hex>",
      "input": {"height": 160, "width": 160, "channels": 3, "color_order": "RGB", "dtype": "uint8",
                "resize": "area", "normalization": {"scale": 1.0, "offset": 0.0},
                "quantization": {"scale": 1.0, "zero_point": 0}},
      "output": {"embedding_dim": 128, "dtype": "float32", "l2_normalized": true,
                 "quantization": null},
      "threshold": 0.41,
      "threshold_info": {"method": "leave-class-out", "target_far": 0.01, ...},
      "classes": ["Anjou", ...],
      "provenance": {"source_run": "runs/arcface", "quantization": "int8",
                     "created": "2026-11-22T10:00:00Z", "forced": false, "tool": "convert 0.1",
                     "tensorflow": "2.21.0"},
      "parity": {"mean_cosine": 0.995, "min_cosine": 0.97, ...}
    }

How the device turns a crop into the model's input (see `device.preprocess.prepare`):
  BGR crop -> colour order -> resize to height x width (`resize`: "area" shrinks by 2x or more
  with cv2.INTER_AREA and by less with cv2.INTER_LINEAR; "linear" always uses cv2.INTER_LINEAR)
  -> float pixels in 0..255 ->
  x * normalization.scale + normalization.offset -> for integer inputs quantised with
  `quantization` (q = round(x / scale + zero_point)) -> dtype.
The project's own extractors take raw 0..255 RGB pixels and normalise inside the network, so the
int8 bundle's uint8 input is fed the resized crop's pixels directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT = "prodrec-bundle"
FORMAT_VERSION = 2
# Version 1 bundles (no `adaptation`) still load: the device then matches as it always did.
READABLE_VERSIONS = (1, 2)
META_FILE = "model.json"
MODEL_FILE = "model.tflite"

COLOR_ORDERS = ("RGB", "BGR")
INPUT_DTYPES = ("uint8", "int8", "float32")
OUTPUT_DTYPES = ("float32", "int8", "uint8")
RESIZE_MODES = ("area", "linear")


@dataclass(frozen=True)
class Quantization:
    """Affine quantisation of a tensor: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class Normalization:
    """Applied to 0..255 pixel values before quantisation: x * scale + offset."""

    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int = 3
    color_order: str = "RGB"
    dtype: str = "uint8"
    resize: str = "area"
    normalization: Normalization = field(default_factory=Normalization)
    quantization: Quantization | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, self.height, self.width, self.channels)


@dataclass(frozen=True)
class OutputSpec:
    embedding_dim: int
    dtype: str = "float32"
    l2_normalized: bool = True
    quantization: Quantization | None = None


@dataclass(frozen=True)
class Provenance:
    source_run: str
    quantization: str
    created: str
    forced: bool = False
    tool: str = ""
    tensorflow: str = ""


@dataclass(frozen=True)
class Adaptation:
    """What the device needs to adapt matching to its own products, without retraining (format 2).

    - `domain_mean`: the mean unit embedding of the training domain's images. Pooled CNN features
      share a large common component (every cosine is high); the device subtracts a mean before
      matching, starting from this one and blending in its own enrolled views' mean as the
      gallery grows: mu = w * gallery_mean + (1 - w) * domain_mean, w = n_views / (n_views +
      `prior_views`) (see device/adaptation.py).
    - `cohort_file`: an (M, D) float16 .npy of unit embeddings of training-domain images (never
      a shop's products): stand-ins for "products that were never enrolled" when the device sets
      its unknown threshold by itself (device/threshold_rule.py), with `target_far` the share of
      them it may accept.
    """

    domain_mean: tuple[float, ...]
    prior_views: float = 50.0
    cohort_file: str | None = None
    cohort_sha256: str | None = None
    target_far: float = 0.01
    source: str = ""


@dataclass(frozen=True)
class BundleMeta:
    name: str
    model_id: str
    input: InputSpec
    output: OutputSpec
    provenance: Provenance
    threshold: float | None = None
    threshold_info: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    model_file: str = MODEL_FILE
    format_version: int = FORMAT_VERSION
    adaptation: Adaptation | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        if self.adaptation is None:
            del data["adaptation"]
        else:
            data["adaptation"]["domain_mean"] = [round(v, 7) for v in self.adaptation.domain_mean]
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = META_FILE) -> BundleMeta:
        return _parse(data, where)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def embedding_id(meta: BundleMeta) -> str:
    """What the device keys stored embeddings by: the model file (`model_id`, its sha256) and the
    preprocessing `model.json` declares (size, colour order, resize, scaling, quantization). An
    edit of model.json that changes what the model is fed (e.g. BGR for RGB) makes embeddings
    that do not match the old ones: a new id, so the stored views are re-embedded, not mixed.
    (The adaptation of a format-2 bundle is applied when matching, not to stored embeddings.)"""
    spec = json.dumps(asdict(meta.input), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{meta.model_id}\n{spec}".encode()).hexdigest()


def write_bundle_meta(bundle_dir: str | Path, meta: BundleMeta) -> Path:
    """Write model.json atomically (a crash never leaves a half-written contract)."""
    path = Path(bundle_dir) / META_FILE
    from .files import write_text_atomic

    write_text_atomic(path, json.dumps(meta.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def bundle_dir_of(path: str | Path) -> Path:
    """The bundle directory meant by `path`: the directory itself, or the folder of a model.json
    or .tflite file in it (people point --model at either file as often as at the folder)."""
    path = Path(path)
    if path.name == META_FILE or (path.suffix == ".tflite" and path.is_file()):
        return path.parent
    return path


def read_bundle_meta(bundle_dir: str | Path, *, verify_model_id: bool = True) -> BundleMeta:
    """Read and validate `model.json` of a bundle directory (or of the folder of a model.json or
    .tflite path, see `bundle_dir_of`).

    Raises BundleError with what to do when the bundle is missing, malformed, or its .tflite does
    not match the recorded model id.
    """
    bundle_dir = bundle_dir_of(bundle_dir)
    meta_path = bundle_dir / META_FILE
    if not bundle_dir.is_dir():
        raise BundleError(
            f"model bundle {bundle_dir} does not exist: point --model at a folder made by "
            "`python -m convert` (it holds model.tflite and model.json)"
        )
    if not meta_path.is_file():
        raise BundleError(
            f"{meta_path} is missing: a bundle is model.tflite plus model.json, both written by "
            "`python -m convert`; re-run the conversion rather than copying the .tflite alone"
        )
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{meta_path} is not valid JSON ({exc}); re-run `python -m convert`"
        ) from exc
    meta = _parse(data, str(meta_path))
    model_path = bundle_dir / meta.model_file
    if not model_path.is_file():
        raise BundleError(
            f"{model_path} named by {meta_path} is missing; re-run `python -m convert`"
        )
    if verify_model_id:
        actual = sha256_file(model_path)
        if actual != meta.model_id:
            raise BundleError(
                f"{model_path} does not match {meta_path} (sha256 {actual[:12]}..., model.json says "
                f"{meta.model_id[:12]}...): the files come from different conversions or the .tflite "
                "is corrupt; copy both files of one bundle together"
            )
        _verify_cohort(bundle_dir, meta)
    return meta


def bundle_files(meta: BundleMeta) -> tuple[str, ...]:
    """The files of a bundle folder the device reads: model.json, the model and, in format 2, the
    cohort. Copy all of them together (install.sh and deploy-model.sh copy the whole folder)."""
    cohort = meta.adaptation.cohort_file if meta.adaptation is not None else None
    return (META_FILE, meta.model_file) + ((cohort,) if cohort else ())


def _verify_cohort(bundle_dir: Path, meta: BundleMeta) -> None:
    """The cohort file model.json names is there and is the one it names (by sha256)."""
    adaptation = meta.adaptation
    if adaptation is None or adaptation.cohort_file is None:
        return
    path = bundle_dir / adaptation.cohort_file
    if not path.is_file():
        raise BundleError(
            f"{path} named by {bundle_dir / META_FILE} is missing: copy the whole bundle folder "
            "(model.json, the .tflite and the cohort), or re-run `python -m convert`"
        )
    if adaptation.cohort_sha256 and sha256_file(path) != adaptation.cohort_sha256:
        raise BundleError(
            f"{path} does not match model.json's cohort_sha256: the files come from different "
            "conversions; copy the whole bundle folder"
        )


# --- parsing -------------------------------------------------------------------------------------


def _req(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: required field '{key}' is missing; re-run `python -m convert`")
    return data[key]


def _check_keys(data: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise BundleError(f"{where}: unknown field(s) {sorted(unknown)}; is this bundle newer?")
    return data


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BundleError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _finite(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BundleError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    # Not bool(value): the string "no" would be true.
    if not isinstance(value, bool):
        raise BundleError(
            f"{where}: expected true or false, got {value!r}; re-run `python -m convert`"
        )
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    """An optional JSON object (absent or null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BundleError(
            f"{where}: expected a JSON object (or null), got {type(value).__name__} {value!r}; "
            "re-run `python -m convert`"
        )
    return dict(value)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise BundleError(f"{where}: expected one of {list(choices)}, got {value!r}")
    return value


def _quant(data: Any, where: str) -> Quantization | None:
    if data is None:
        return None
    _check_keys(data, {"scale", "zero_point"}, where)
    scale = _finite(_req(data, "scale", where), f"{where}.scale")
    if scale <= 0:
        raise BundleError(f"{where}.scale must be positive, got {scale}")
    zp = _req(data, "zero_point", where)
    if not isinstance(zp, int) or isinstance(zp, bool):
        raise BundleError(f"{where}.zero_point must be an integer, got {zp!r}")
    return Quantization(scale=scale, zero_point=zp)


def _parse(data: Any, where: str) -> BundleMeta:
    fields = {f for f in BundleMeta.__dataclass_fields__} | {"format"}
    _check_keys(data, fields, where)
    if data.get("format") != FORMAT:
        raise BundleError(f"{where}: not a {FORMAT} model.json (format={data.get('format')!r})")
    version = _req(data, "format_version", where)
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"{where}: format_version {version!r} is not supported (this device reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); update the device software or convert "
            "with a matching version"
        )

    inp = _check_keys(
        _req(data, "input", where), set(InputSpec.__dataclass_fields__), f"{where}.input"
    )
    norm = inp.get("normalization") or {}
    _check_keys(norm, {"scale", "offset"}, f"{where}.input.normalization")
    input_spec = InputSpec(
        height=_positive_int(_req(inp, "height", where), f"{where}.input.height"),
        width=_positive_int(_req(inp, "width", where), f"{where}.input.width"),
        channels=_positive_int(inp.get("channels", 3), f"{where}.input.channels"),
        color_order=_choice(
            inp.get("color_order", "RGB"), COLOR_ORDERS, f"{where}.input.color_order"
        ),
        dtype=_choice(_req(inp, "dtype", where), INPUT_DTYPES, f"{where}.input.dtype"),
        resize=_choice(inp.get("resize", "area"), RESIZE_MODES, f"{where}.input.resize"),
        normalization=Normalization(
            scale=_finite(norm.get("scale", 1.0), f"{where}.input.normalization.scale"),
            offset=_finite(norm.get("offset", 0.0), f"{where}.input.normalization.offset"),
        ),
        quantization=_quant(inp.get("quantization"), f"{where}.input.quantization"),
    )
    if input_spec.channels != 3:
        raise BundleError(
            f"{where}: input.channels must be 3 (colour images), got {input_spec.channels}"
        )
    if input_spec.dtype != "float32" and input_spec.quantization is None:
        raise BundleError(f"{where}: integer input ({input_spec.dtype}) needs input.quantization")

    out = _check_keys(
        _req(data, "output", where), set(OutputSpec.__dataclass_fields__), f"{where}.output"
    )
    output_spec = OutputSpec(
        embedding_dim=_positive_int(
            _req(out, "embedding_dim", where), f"{where}.output.embedding_dim"
        ),
        dtype=_choice(out.get("dtype", "float32"), OUTPUT_DTYPES, f"{where}.output.dtype"),
        l2_normalized=_bool(out.get("l2_normalized", True), f"{where}.output.l2_normalized"),
        quantization=_quant(out.get("quantization"), f"{where}.output.quantization"),
    )
    if output_spec.dtype != "float32" and output_spec.quantization is None:
        raise BundleError(
            f"{where}: integer output ({output_spec.dtype}) needs output.quantization"
        )

    prov = _check_keys(
        _req(data, "provenance", where), set(Provenance.__dataclass_fields__), f"{where}.provenance"
    )
    provenance = Provenance(
        source_run=str(_req(prov, "source_run", f"{where}.provenance")),
        quantization=str(_req(prov, "quantization", f"{where}.provenance")),
        created=str(_req(prov, "created", f"{where}.provenance")),
        forced=_bool(prov.get("forced", False), f"{where}.provenance.forced"),
        tool=str(prov.get("tool", "")),
        tensorflow=str(prov.get("tensorflow", "")),
    )

    threshold = data.get("threshold")
    if threshold is not None:
        threshold = _finite(threshold, f"{where}.threshold")
        if not -1.0 <= threshold <= 1.0:
            raise BundleError(
                f"{where}: threshold is a cosine similarity in [-1, 1], got {threshold}"
            )

    model_id = _req(data, "model_id", where)
    if not (isinstance(model_id, str) and len(model_id) == 64):
        raise BundleError(
            f"{where}: model_id must be the sha256 hex of the .tflite, got {model_id!r}"
        )
    model_file = data.get("model_file", MODEL_FILE)
    if not isinstance(model_file, str) or "/" in model_file or "\\" in model_file:
        raise BundleError(
            f"{where}: model_file must be a file name inside the bundle, got {model_file!r}"
        )
    classes = data.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{where}: classes must be a list of strings")

    return BundleMeta(
        name=str(_req(data, "name", where)),
        model_id=model_id,
        input=input_spec,
        output=output_spec,
        provenance=provenance,
        threshold=threshold,
        threshold_info=_object(data.get("threshold_info"), f"{where}.threshold_info"),
        classes=tuple(classes),
        parity=_object(data.get("parity"), f"{where}.parity"),
        model_file=model_file,
        format_version=version,
        adaptation=_adaptation(data.get("adaptation"), output_spec.embedding_dim, where),
    )


def _adaptation(data: Any, dim: int, where: str) -> Adaptation | None:
    if data is None:
        return None
    where = f"{where}.adaptation"
    data = _check_keys(data, set(Adaptation.__dataclass_fields__), where)
    mean = _req(data, "domain_mean", where)
    if not isinstance(mean, list) or len(mean) != dim:
        raise BundleError(
            f"{where}.domain_mean must be a list of {dim} numbers (the embedding size)"
        )
    values = tuple(_finite(v, f"{where}.domain_mean") for v in mean)
    prior = _finite(data.get("prior_views", 50.0), f"{where}.prior_views")
    if prior < 0:
        raise BundleError(f"{where}.prior_views must be >= 0, got {prior}")
    far = _finite(data.get("target_far", 0.01), f"{where}.target_far")
    if not 0.0 < far < 0.5:
        raise BundleError(f"{where}.target_far must be in (0, 0.5), got {far}")
    cohort = data.get("cohort_file")
    if cohort is not None and (not isinstance(cohort, str) or "/" in cohort or "\\" in cohort):
        raise BundleError(
            f"{where}.cohort_file must be a file name inside the bundle, got {cohort!r}"
        )
    sha = data.get("cohort_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise BundleError(f"{where}.cohort_sha256 must be a sha256 hex digest, got {sha!r}")
    return Adaptation(
        domain_mean=values,
        prior_views=prior,
        cohort_file=cohort,
        cohort_sha256=sha,
        target_far=far,
        source=str(data.get("source", "")),
    )
