"""A deterministic stand-in for device.embedder.Embedder (same interface, no model): the crop's
centre, downscaled to 8x8 colour pixels, mean-removed and L2-normalised. Different photos give
clearly different vectors, the same photo cropped slightly differently gives nearly the same."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import cv2
import numpy as np


class FakeEmbedder:
    def __init__(
        self, model_id: str = "f" * 64, threshold: float | None = 0.8, size: int = 8
    ) -> None:
        self.model_id = model_id
        self.size = size
        self.dim = size * size * 3
        self.meta = SimpleNamespace(threshold=threshold, name="fake")
        self.calls = 0
        self.closed = False

    @property
    def embedding_id(self) -> str:
        return self.model_id  # a stand-in has no preprocessing of its own

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        self.calls += 1
        h, w = crop_bgr.shape[:2]
        # The central 80%: the padding around the object differs between a photo and a scene crop.
        c = crop_bgr[h // 10 : h - h // 10, w // 10 : w - w // 10]
        v = cv2.resize(c, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        v = v.reshape(-1) - v.mean()
        if self.model_id.startswith("e"):  # a "different model": another (fixed) projection
            v = v[::-1].copy()
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def embed_many(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        rows = [self.embed(c) for c in crops]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
