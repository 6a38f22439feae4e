"""Matching that adapts to the device's own products, without retraining: centring.

Pooled CNN features (the default model's embedding since bundle format 2) are non-negative and
share a large component common to every image, so any two products score a high cosine and the
scores of different product domains sit at different levels. Subtracting a mean embedding before
the cosine removes that component (the "centring" of, e.g., Wang et al., "SimpleShot", 2019).

Which mean: the domain the device works in is the shop's, known only from what it has enrolled.
The bundle ships the mean of its training domain (`model.json` adaptation.domain_mean) as a prior,
and the enrolled views' mean takes over as the gallery grows:

    mu = w * mean(views) + (1 - w) * domain_mean,     w = n_views / (n_views + prior_views)

so a device with 4 views leans on the shipped mean and one with hundreds on its own. Stored views
stay raw unit embeddings (centring is applied when the matcher is built), so re-embedding after a
model upgrade and re-centring after an enrollment need nothing but the crops and the views.

Threading: pure functions on arrays; whoever builds the matcher (the frame loop) calls them.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Adaptation, BundleMeta, bundle_dir_of
from .errors import BundleError
from .vectors import l2_normalize

log = logging.getLogger(__name__)


def blend_weight(n_views: int, prior_views: float) -> float:
    """w of the gallery's own mean: n / (n + k); 1 with no prior (k = 0), 0 with no views."""
    if n_views < 0:
        raise ValueError(f"n_views must be >= 0, got {n_views}")
    if prior_views < 0:
        raise ValueError(f"prior_views must be >= 0, got {prior_views}")
    if n_views == 0:
        return 0.0
    return n_views / (n_views + prior_views)


def centre_vector(
    views: np.ndarray, domain_mean: np.ndarray | None, prior_views: float
) -> np.ndarray | None:
    """The mean to subtract: the blend of the views' mean and the domain mean (see module doc).
    None when there is nothing to centre on (no domain mean and no views)."""
    views = np.asarray(views, dtype=np.float32)
    if domain_mean is None:
        return l2_normalize(views).mean(axis=0) if len(views) else None
    prior = np.asarray(domain_mean, dtype=np.float32)
    if len(views) == 0:
        return prior
    if views.shape[1] != prior.shape[0]:
        raise ValueError(
            f"the stored views have {views.shape[1]} values but the bundle's domain mean "
            f"{prior.shape[0]}: the views come from another model"
        )
    w = np.float32(blend_weight(len(views), prior_views))
    return w * l2_normalize(views).mean(axis=0) + (np.float32(1.0) - w) * prior


@dataclass(frozen=True)
class Centring:
    """The bundle's centring prior (absent for format-1 bundles: then nothing is centred)."""

    domain_mean: np.ndarray | None
    prior_views: float

    @classmethod
    def none(cls) -> Centring:
        return cls(None, 0.0)

    @classmethod
    def from_meta(cls, meta: BundleMeta | None) -> Centring:
        adaptation = getattr(meta, "adaptation", None)
        if adaptation is None:
            return cls.none()
        return cls(np.asarray(adaptation.domain_mean, dtype=np.float32), adaptation.prior_views)

    @property
    def enabled(self) -> bool:
        return self.domain_mean is not None

    def mean_for(self, views: np.ndarray) -> np.ndarray | None:
        if not self.enabled:
            return None
        return centre_vector(views, self.domain_mean, self.prior_views)


def load_cohort(bundle_dir: str | Path, meta: BundleMeta) -> np.ndarray | None:
    """The bundle's cohort of training-domain embeddings (M, D) float32, or None if it has none.
    BundleError when the file is missing, altered or of the wrong shape."""
    adaptation: Adaptation | None = meta.adaptation
    if adaptation is None or adaptation.cohort_file is None:
        return None
    path = bundle_dir_of(bundle_dir) / adaptation.cohort_file
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"{path} named by model.json is missing or unreadable ({exc}); copy the whole bundle "
            "folder, or re-run `python -m convert`"
        ) from exc
    if adaptation.cohort_sha256 and hashlib.sha256(raw).hexdigest() != adaptation.cohort_sha256:
        raise BundleError(
            f"{path} does not match model.json's cohort_sha256: the files come from different "
            "conversions; copy the whole bundle folder"
        )
    try:
        cohort = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        raise BundleError(
            f"{path} is not a numpy array file ({exc}); re-run `python -m convert`"
        ) from exc
    if cohort.ndim != 2 or cohort.shape[1] != meta.output.embedding_dim:
        raise BundleError(
            f"{path} holds an array of shape {cohort.shape}, expected (M, "
            f"{meta.output.embedding_dim}); re-run `python -m convert`"
        )
    return l2_normalize(cohort.astype(np.float32))
