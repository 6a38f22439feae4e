"""model.json read by the device: malformed optional fields are bundle errors naming the field and
the file (exit 3), and --model may name the bundle's model.json or .tflite instead of its folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device import cli
from device.bundle import bundle_dir_of, read_bundle_meta
from device.errors import BundleError

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


def _bundle_with(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A bundle folder whose model.json is the default one changed by `change` (no .tflite: the
    metadata is checked before the model file is looked for)."""
    data = json.loads((DEFAULT / "model.json").read_text())
    change(data)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps(data))
    return bundle


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(threshold_info=[1, 2]), "threshold_info"),
        (lambda d: d.update(parity="x"), "parity"),
        (lambda d: d["output"].update(l2_normalized="no"), "output.l2_normalized"),
        (lambda d: d["provenance"].update(forced=1), "provenance.forced"),
    ],
)
def test_malformed_optional_fields_are_bundle_errors(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], field: str, capsys
) -> None:
    bundle = _bundle_with(tmp_path, change)
    meta_path = bundle / "model.json"
    with pytest.raises(BundleError, match=f"{meta_path}.{field}") as info:
        read_bundle_meta(bundle, verify_model_id=False)
    assert "python -m convert" in str(info.value)
    # Through the command line: exit 3 (model bundle problem) with the message, no traceback.
    db = str(tmp_path / "g.db")
    Path(db).touch()  # an empty database (SQLite takes an empty file): the model is checked
    assert cli.main(["products", "check", "--model", str(bundle), "--db", db]) == 3
    err = capsys.readouterr().err
    assert f"{meta_path}.{field}" in err and "Traceback" not in err


def test_optional_fields_may_be_null_or_absent(tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d.update(threshold_info=None)
        del d["parity"]

    bundle = _bundle_with(tmp_path, change)
    for name in ("model.tflite", "cohort.npy"):
        (bundle / name).symlink_to(DEFAULT / name)
    meta = read_bundle_meta(bundle)
    assert meta.threshold_info == {} and meta.parity == {} and meta.output.l2_normalized is True


def test_bundle_dir_of_accepts_the_folder_or_either_file(tmp_path: Path) -> None:
    assert bundle_dir_of(DEFAULT) == DEFAULT
    assert bundle_dir_of(DEFAULT / "model.json") == DEFAULT
    assert bundle_dir_of(DEFAULT / "model.tflite") == DEFAULT
    assert bundle_dir_of(tmp_path / "missing") == tmp_path / "missing"
    assert read_bundle_meta(DEFAULT / "model.json").model_id == read_bundle_meta(DEFAULT).model_id


@pytest.mark.parametrize("name", ["model.json", "model.tflite"])
def test_model_option_may_name_a_file_of_the_bundle(tmp_path: Path, name: str, capsys) -> None:
    # The real loader (no stand-in): the default bundle, named by one of its files.
    db = str(tmp_path / "g.db")
    Path(db).touch()  # an empty database (SQLite takes an empty file): the model is checked
    assert cli.main(["products", "check", "--model", str(DEFAULT / name), "--db", db]) == 0
    assert "no products stored" in capsys.readouterr().err
