"""RUN_DIR: the files `training fit` writes and `convert` / `calibrate` / `evaluate` read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from device import files

CONFIG_FILE = "config.json"
EXTRACTOR_FILE = "extractor.keras"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
SAMPLES_FILE = "augmentation.png"
# Everything `fit` writes into a RUN_DIR: what --overwrite may replace.
RUN_FILES = frozenset(
    {CONFIG_FILE, EXTRACTOR_FILE, MODEL_FILE, HISTORY_FILE, CURVES_FILE, SAMPLES_FILE}
)
RUN_FORMAT = "prodrec-run"
RUN_FORMAT_VERSION = 1


def _config_path(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    return path if path.name == CONFIG_FILE else path / CONFIG_FILE


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json of a RUN_DIR (or its path). Raises ValueError when missing or not a run."""
    path = _config_path(run_dir)
    if not path.is_file():
        raise ValueError(
            f"{path} not found: is {Path(run_dir)} a RUN_DIR written by `training fit`?"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"cannot read {path} ({exc}); is this a RUN_DIR from `training fit`?"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} is not a {RUN_FORMAT} config (not a JSON object)")
    if cfg.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not a {RUN_FORMAT} config (format={cfg.get('format')!r})")
    if cfg.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {cfg['format_version']}; this code reads up to "
            f"{RUN_FORMAT_VERSION}: update prodrec"
        )
    return cfg


def write_run_config(run_dir: str | Path, cfg: dict[str, Any]) -> Path:
    """Write config.json atomically (temp file + rename): readers never see half a file."""
    path = _config_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_text_atomic(path, json.dumps(cfg, indent=2) + "\n")


def staging_dir(out: Path) -> Path:
    """A new hidden folder beside `out` to write a run into; ValueError when that is impossible
    (checked before any slow work)."""
    try:
        return files.staging_dir(out)
    except OSError as exc:
        raise ValueError(
            f"cannot write the run into {out.parent} ({exc.strerror or exc}): give an --out in a "
            "folder you can write"
        ) from exc
