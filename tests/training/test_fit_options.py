"""FitConfig's fields are written once: the `fit` options and their mapping back come from them."""

from __future__ import annotations

from dataclasses import fields

import pytest

from training.cli import build_parser, config_from_args
from training.config import FitConfig


def parse(*argv: str) -> FitConfig:
    return config_from_args(build_parser().parse_args(["fit", "DATA", "--out", "RUN", *argv]))


def test_no_options_give_the_dataclass_defaults() -> None:
    assert parse() == FitConfig()


def test_every_option_reaches_its_field() -> None:
    cfg = parse(
        "--head", "cosface", "--alpha", "0.5", "--input-size", "128", "--embedding-dim", "64",
        "--weights", "none", "--dropout", "0.1", "--scale", "30", "--margin", "0.2",
        "--easy-margin", "--sphereface-lambda", "2", "--epochs", "5", "--frozen-epochs", "1",
        "--unfreeze", "0.5,1", "--batch-size", "8", "--lr", "0.01", "--finetune-lr", "0.002",
        "--val-split", "0.2", "--classes", "a,b", "--seed", "3", "--no-augment", "--flip",
        "--aug-zoom", "0.8", "--aug-colour", "0.1", "--aug-erase", "0.2", "--aug-dark", "0.3",
        "--patience", "4", "--strategy", "mirrored",
    )  # fmt: skip
    assert cfg == FitConfig(
        head="cosface", alpha=0.5, input_size=128, embedding_dim=64, weights=None, dropout=0.1,
        scale=30.0, margin=0.2, easy_margin=True, sphereface_lambda=2.0, epochs=5,
        frozen_epochs=1, unfreeze=(0.5, 1.0), batch_size=8, lr=0.01, finetune_lr=0.002,
        val_split=0.2, classes=("a", "b"), seed=3, augment=False, flip=True, aug_zoom=0.8,
        aug_colour=0.1, aug_erase=0.2, aug_dark=0.3, early_stopping_patience=4,
        strategy="mirrored",
    )  # fmt: skip
    on_cli = {f.name for f in fields(FitConfig) if "help" in f.metadata}
    assert on_cli == {f.name for f in fields(FitConfig)} - {
        "lr_patience",
        "lr_factor",
        "decode_scale",
    }


def test_distill_and_l2sp_reach_their_fields_and_need_pretrained_weights() -> None:
    cfg = parse("--distill", "0.5", "--l2sp", "0.05")
    assert (cfg.distill, cfg.l2sp) == (0.5, 0.05)
    with pytest.raises(ValueError, match="pretrained"):
        parse("--l2sp", "0.05", "--weights", "none")
    with pytest.raises(ValueError, match="pretrained"):
        parse("--distill", "0.5", "--weights", "none")


def test_unfreeze_default_follows_the_weights() -> None:
    assert parse("--weights", "none").unfreeze == (1.0,)
    assert parse().unfreeze == FitConfig.unfreeze
