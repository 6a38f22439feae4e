"""Loss heads are classes registered by name: the config, the CLI and the loss find them there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.config import HEAD_DEFAULTS, HEADS, FitConfig
from training.heads import base, get_head

ROOT = Path(__file__).resolve().parents[2]


def test_every_head_is_registered_from_its_own_file() -> None:
    assert HEADS == ("arcface", "cosface", "sphereface", "normface", "softmax")
    for name in HEADS:
        head = get_head(name)
        assert type(head).__module__ == f"training.heads.{name}"
    assert HEAD_DEFAULTS["arcface"] == (64.0, 0.5) and HEAD_DEFAULTS["softmax"] == (None, None)
    with pytest.raises(ValueError, match="unknown head 'triplet'"):
        get_head("triplet")


def test_margin_checks_come_from_the_head() -> None:
    with pytest.raises(ValueError, match="ArcFace margin"):
        FitConfig(head="arcface", margin=2.0)
    with pytest.raises(ValueError, match="SphereFace margin is an integer"):
        FitConfig(head="sphereface", margin=2.5)
    assert FitConfig(head="cosface").resolved_margin == 0.35


def test_a_new_head_is_one_registered_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @base.register
    class Plain(base.AngularHead):
        name = "plain"
        default_margin = 0.0

        def target(self, cos, margin, **_):  # type: ignore[no-untyped-def]
            return cos

    assert isinstance(get_head("plain"), Plain)
    with pytest.raises(ValueError, match="already registered"):
        base.register(Plain)


def test_the_registry_loads_no_tensorflow() -> None:
    code = "import sys, training.config; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
