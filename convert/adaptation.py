"""The bundle's `adaptation` block (format 2): the training domain's mean embedding and a cohort.

Both are computed from the converted model itself, through the device's own `Embedder`, on the
calibration images (the training classes' photos): the device centres and thresholds with the
numbers its own int8 model produces, not the float model's. See device/adaptation.py and
device/threshold_rule.py for how the device uses them.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from device.bundle import Adaptation
from device.embedder import Embedder

log = logging.getLogger(__name__)

COHORT_FILE = "cohort.npy"
DEFAULT_COHORT_SIZE = 300
DEFAULT_PRIOR_VIEWS = 10.0
DEFAULT_TARGET_FAR = 0.01


def compute_adaptation(
    bundle_dir: Path,
    images: Sequence[np.ndarray],
    *,
    cohort_size: int = DEFAULT_COHORT_SIZE,
    prior_views: float = DEFAULT_PRIOR_VIEWS,
    target_far: float = DEFAULT_TARGET_FAR,
    source: str = "",
) -> Adaptation:
    """Embed `images` (BGR crops) with the bundle in `bundle_dir`, write its cohort file there and
    return the Adaptation for model.json. The cohort is an evenly spaced subset of the images."""
    if not images:
        raise ValueError("no calibration images to compute the domain mean and cohort from")
    if cohort_size < 0:
        raise ValueError(f"--cohort-size must be >= 0, got {cohort_size}")
    with Embedder(bundle_dir, num_threads=2) as embedder:
        emb = embedder.embed_many(images)
    mean = emb.mean(axis=0)
    sha = None
    name = None
    if cohort_size:
        idx = np.unique(np.linspace(0, len(emb) - 1, min(cohort_size, len(emb))).astype(int))
        buf = io.BytesIO()
        np.save(buf, emb[idx].astype(np.float16))
        raw = buf.getvalue()
        (bundle_dir / COHORT_FILE).write_bytes(raw)
        sha, name = hashlib.sha256(raw).hexdigest(), COHORT_FILE
        log.info("cohort: %d embeddings (%d KB)", len(idx), len(raw) // 1024)
    return Adaptation(
        domain_mean=tuple(float(v) for v in mean),
        prior_views=float(prior_views),
        cohort_file=name,
        cohort_sha256=sha,
        target_far=float(target_far),
        source=source or f"{len(emb)} calibration images",
    )
