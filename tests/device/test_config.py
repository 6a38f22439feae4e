"""Configuration: the shipped default file, unknown keys, ranges, --validate-config."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.cli import main
from device.config import DEFAULT_CONFIG_FILE, Config, ConfigError, load_config


def test_default_file_documents_the_defaults() -> None:
    assert load_config(DEFAULT_CONFIG_FILE) == Config()


def test_partial_file_and_types(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[camera]\nsource = "0"\nroi = [0.1, 0, 0.9, 1]\n[matcher]\nthreshold = 0.5\n')
    cfg = load_config(p)
    assert cfg.camera.source == "0" and cfg.camera.roi == (0.1, 0.0, 0.9, 1.0)
    assert cfg.matcher.threshold == 0.5 and cfg.detector == Config().detector
    p.write_text("[matcher]\nthreshold = 1\n[detector]\nthreshold = 30\n")
    cfg = load_config(p)
    assert cfg.matcher.threshold == 1.0 and isinstance(cfg.matcher.threshold, float)
    assert cfg.detector.threshold == 30


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[camera]\nsoruce = 'x'\n", "soruce"),
        ("[camra]\n", "camra"),
        ("[detector]\nthreshold = 300\n", "threshold = 300"),
        # Only the matcher's threshold (a cosine similarity) is a float; the detector's is a
        # grey level.
        ("[detector]\nthreshold = 28.7\n", "[detector]: threshold must be an integer"),
        ("[matcher]\nthreshold = 'high'\n", "[matcher]: threshold must be a number"),
        ("[detector]\nblur = 4\n", "odd"),
        ("[camera]\nroi = [0.5, 0, 0.4, 1]\n", "roi"),
        ("[camera]\nwidth = 'big'\n", "integer"),
        ("[detector]\nmethod = 'knn'\n", "mog2"),
        ("[placement]\nstable_frames = 0\n", "stable_frames"),
        ("[service]\nlog_level = 'LOUD'\n", "log_level"),
        ("[camera\n", "not valid TOML"),
    ],
)
def test_bad_config_named(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(p)
    assert needle in str(err.value)


def test_validate_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--validate-config", "--config", str(DEFAULT_CONFIG_FILE)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[gallery]\npaht = 'x'\n")
    assert main(["run", "--validate-config", "--config", str(bad)]) == 2
    assert "paht" in capsys.readouterr().err
    assert main(["run", "--validate-config", "--config", str(tmp_path / "missing.toml")]) == 2
    unreadable = tmp_path / "binary.toml"
    unreadable.write_bytes(b"\xff\xfe\x00bad")
    assert main(["run", "--validate-config", "--config", str(unreadable)]) == 2
