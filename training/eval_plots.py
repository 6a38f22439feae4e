"""Evaluation plots (PNG, matplotlib Agg): score histograms, ROC curves, 2-D embedding map."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import metrics

logger = logging.getLogger(__name__)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_histograms(
    path: Path,
    genuine: np.ndarray,
    impostor: np.ndarray,
    *,
    unknown: np.ndarray | None = None,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """Genuine (own product) vs impostor (best other product) similarity histograms."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = [np.asarray(a)[np.isfinite(a)] for a in (genuine, impostor)]
    if unknown is not None:
        finite.append(np.asarray(unknown)[np.isfinite(unknown)])
    lo = min(float(a.min()) for a in finite if a.size) if any(a.size for a in finite) else -1.0
    hi = max(float(a.max()) for a in finite if a.size) if any(a.size for a in finite) else 1.0
    bins = np.linspace(min(lo, threshold or lo) - 0.02, max(hi, threshold or hi) + 0.02, 41)
    ax.hist(
        finite[0], bins=bins, alpha=0.6, color="tab:green", label=f"genuine (n={finite[0].size})"
    )
    ax.hist(
        finite[1],
        bins=bins,
        alpha=0.6,
        color="tab:red",
        label=f"impostor, leave-class-out (n={finite[1].size})",
    )
    if unknown is not None:
        ax.hist(
            finite[2],
            bins=bins,
            alpha=0.5,
            color="tab:purple",
            label=f"real unknown products (n={finite[2].size})",
        )
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity (best enrollment shot of the product)")
    ax.set_ylabel("queries")
    ax.set_title(title or "Genuine vs impostor scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    threshold: float | None = None,
    title: str = "",
) -> Path:
    """ROC of known (positive) vs unknown (negative) best scores, one curve per unknown kind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (pos, neg) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(pos, neg)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {metrics.auroc(pos, neg):.3f})")
        if threshold is not None:
            t = np.float32(threshold)
            x = float(np.mean(np.asarray(neg, np.float32) >= t))
            y = float(np.mean(np.asarray(pos, np.float32) >= t))
            ax.plot([x], [y], "o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-accept rate (unknown products accepted)")
    ax.set_ylabel("known products accepted")
    ax.set_title(title or "Open-set ROC" + (" (dot: threshold)" if threshold is not None else ""))
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_embedding_map(
    path: Path,
    embeddings: np.ndarray,
    labels: Sequence[str],
    *,
    enroll_embeddings: np.ndarray | None = None,
    enroll_labels: Sequence[str] | None = None,
    seed: int = 0,
    title: str = "",
) -> Path | None:
    """t-SNE map of query embeddings coloured by product (enrollment shots as black-edged stars)."""
    from sklearn.manifold import TSNE

    emb = np.asarray(embeddings, dtype=np.float32)
    n_query = emb.shape[0]
    if enroll_embeddings is not None and enroll_labels is not None:
        emb = np.concatenate([emb, np.asarray(enroll_embeddings, dtype=np.float32)])
        all_labels = list(labels) + list(enroll_labels)
    else:
        all_labels = list(labels)
    if emb.shape[0] < 5:
        logger.warning("too few embeddings (%s) for a 2-D map; skipped", emb.shape[0])
        return None
    perplexity = float(min(30.0, (emb.shape[0] - 1) / 3.0))
    xy = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine"
    ).fit_transform(emb)
    plt = _pyplot()
    products = list(dict.fromkeys(all_labels))
    cmap = plt.get_cmap("tab20" if len(products) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 6.5))
    lab_arr = np.array(all_labels)
    is_query = np.arange(emb.shape[0]) < n_query
    for i, product in enumerate(products):
        color = cmap(i % cmap.N)
        sel = (lab_arr == product) & is_query
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=color, label=product, alpha=0.8)
        sel = (lab_arr == product) & ~is_query
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=90, marker="*", color=color, edgecolors="black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of query embeddings (stars: enrollment shots)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
