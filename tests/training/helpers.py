"""Helpers shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from training.config import FitConfig


def start_config(tiny_run_dir: Path) -> FitConfig:
    """A tiny fine-tuning run that starts from the trained `tiny_run_dir` (pretrained weights),
    with a high learning rate so the backbone moves within 2 epochs (--distill / --l2sp tests)."""
    return FitConfig(
        alpha=0.35, input_size=96, embedding_dim=32, weights=str(tiny_run_dir / "extractor.keras"),
        epochs=2, frozen_epochs=0, unfreeze=(0.5,), batch_size=16, val_split=0.25,
        finetune_lr=3e-3, augment=False, seed=0,
    )  # fmt: skip
