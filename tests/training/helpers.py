"""Helpers shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from training.config import FitConfig


def start_config(tiny_run_dir: Path) -> FitConfig:
    """A tiny fine-tuning run that starts from the trained `tiny_run_dir` (pretrained weights),
    with a high learning rate so the backbone moves in its one epoch (--distill / --l2sp tests).
    One epoch, because a fit keeps its best epoch's weights: with two, which epoch a run kept
    decided the comparison more than the option under test did."""
    return FitConfig(
        alpha=0.35, input_size=96, embedding_dim=32, weights=str(tiny_run_dir / "extractor.keras"),
        epochs=1, frozen_epochs=0, unfreeze=(0.5,), batch_size=16, val_split=0.25,
        finetune_lr=3e-3, augment=False, seed=0,
    )  # fmt: skip
