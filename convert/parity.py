"""How closely the converted model follows the Keras one: per-image cosine and P@1.

P@1 is the device's decision rule without a threshold: a query is matched to the product whose best
enrolled view has the highest cosine (`device.matcher.Matcher.product_scores`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from device.vectors import l2_normalize

DEFAULT_MIN_COSINE = 0.98


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of (N, D) arrays."""
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


def cosine_summary(cosines: np.ndarray) -> dict[str, Any]:
    if cosines.size == 0:
        raise ValueError("no images to compare: the parity check needs at least one image")
    return {
        "n": int(cosines.size),
        "mean_cosine": round(float(np.mean(cosines)), 6),
        "min_cosine": round(float(np.min(cosines)), 6),
        "median_cosine": round(float(np.median(cosines)), 6),
        "p05_cosine": round(float(np.percentile(cosines, 5)), 6),
    }


def product_scores(
    gallery: np.ndarray, labels: Sequence[str], queries: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """(products in first-seen order, (Q, P) best-view cosine of each query to each product),
    computed by the device's own matcher."""
    from device.matcher import Matcher

    if len(labels) == 0:
        raise ValueError("no enrolled images: P@1 needs an --enroll folder with images")
    return Matcher(gallery, list(labels), threshold=0.0).product_scores(queries)


def precision_at_1(
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    queries: np.ndarray,
    query_labels: Sequence[str],
) -> dict[str, Any]:
    """P@1 over the queries whose product is enrolled (the others cannot be right)."""
    products, scores = product_scores(gallery, gallery_labels, queries)
    enrolled = set(products)
    keep = np.array([label in enrolled for label in query_labels], dtype=bool)
    if not keep.any():
        raise ValueError("no query image belongs to an enrolled product: check --enroll/--query")
    from training.metrics import precision_at_1 as p_at_1

    predicted = [products[i] for i in np.argmax(scores, axis=1)]
    kept = [(p, q) for p, q, k in zip(predicted, query_labels, keep, strict=True) if k]
    return {
        "p_at_1": round(p_at_1([p for p, _ in kept], [q for _, q in kept]), 6),
        "n_queries": int(keep.sum()),
        "n_products": len(products),
        "n_gallery": len(gallery_labels),
        "skipped_queries": int((~keep).sum()),
    }


def labelled_images(root: str | Path) -> list[tuple[Path, str]]:
    """(image, product) pairs from a folder-per-product tree; the label is the top folder's name."""
    from device.folders import is_hidden, product_dirs
    from device.images import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder-per-product tree of images")
    pairs = [
        (p, folder.name)
        for folder in product_dirs(root)
        for p in sorted(folder.rglob("*"))
        if is_image_file(p) and not any(is_hidden(Path(q)) for q in p.relative_to(root).parts)
    ]
    if not pairs:
        raise ValueError(f"{root} holds no <product>/<image> files")
    return pairs
