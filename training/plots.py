"""Training curves: loss and accuracy, train and validation, stage boundaries marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [r.get(prefix + key) for r in history]
            pts = [(e, v) for e, v in zip(epochs, values, strict=True) if v not in (None, "")]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    style,
                    ms=3,
                    label=("val " if prefix else "train ") + label,
                )
        _mark_stages(ax, history)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mark_stages(ax: Any, history: Sequence[dict[str, Any]]) -> None:
    prev = None
    for r in history:
        if prev is not None and r["stage"] != prev:
            ax.axvline(int(r["epoch"]) - 0.5, color="grey", ls="--", lw=1)
            ax.text(
                int(r["epoch"]) - 0.4,
                0.98,
                f"stage {r['stage']}: {r.get('unfrozen', '')}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=7,
                color="grey",
            )
        prev = r["stage"]


def plot_samples(
    images: Any, labels: Sequence[int], classes: Sequence[str], path: str | Path, cols: int = 8
) -> Path:
    """A grid of (augmented) training inputs as the network sees them, for a visual check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    images = np.clip(np.asarray(images, dtype=np.float32), 0, 255).astype(np.uint8)
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            ax.set_title(str(classes[int(labels[i])])[:18], fontsize=6)
    fig.suptitle("training inputs after augmentation", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
