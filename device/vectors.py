"""Unit vectors: the one L2 normalisation and centring that matching, adaptation and evaluation
share (pure numpy; float32 out)."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows (or `axis`) scaled to unit length; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def centre(x: np.ndarray, mu: np.ndarray | None) -> np.ndarray:
    """Unit embeddings -> unit embeddings of (x - mu) (x is normalised first; None: no centring)."""
    x = l2_normalize(x)
    if mu is None:
        return x
    return l2_normalize(x - np.asarray(mu, dtype=np.float32))
