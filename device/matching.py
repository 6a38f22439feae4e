"""How the device turns its stored views into a matcher: centring, threshold, and why.

One `MatchingPolicy` per loaded bundle; `build(views, labels)` is called whenever the products
change (the service's reload, `products check`, `training evaluate` and `bench/domains.py` alike),
so the threshold follows the gallery: recomputed when products are added or removed.

Which threshold is in force, in order:
1. `[matcher] threshold` (or `--threshold`) when set: a fixed override.
2. adaptive (bundles of format 2 with an `adaptation` block): set from the gallery and the
   bundle's cohort (device/threshold_rule.py).
3. the bundle's calibrated `threshold` (format-1 bundles; or a gallery too small for the rule,
   which is said in the log and in `products check`).

Threading: built and used on the frame loop's thread (the matcher is immutable once built).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adaptation import Centring, load_cohort
from .bundle import BundleMeta
from .matcher import Matcher
from .threshold_rule import adaptive_threshold
from .vectors import centre

log = logging.getLogger(__name__)

FIXED, ADAPTIVE, BUNDLE = "[matcher] threshold", "adaptive", "the model bundle"


@dataclass(frozen=True)
class ThresholdDecision:
    value: float
    source: str  # FIXED | ADAPTIVE | BUNDLE
    reason: str  # one sentence for the log, the status line and `products check`

    def describe(self) -> str:
        return f"{self.value:.3f} ({self.source}: {self.reason})"


@dataclass(frozen=True)
class MatchingPolicy:
    centring: Centring
    cohort: np.ndarray | None  # raw unit embeddings (centred when a matcher is built)
    target_far: float
    bundle_threshold: float | None
    fixed_threshold: float | None = None
    ambiguity_margin: float = 0.0

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        meta: BundleMeta,
        *,
        fixed_threshold: float | None = None,
        ambiguity_margin: float = 0.0,
    ) -> MatchingPolicy:
        adaptation = meta.adaptation
        if fixed_threshold is None and adaptation is None and meta.threshold is None:
            raise ValueError(
                "the model bundle has no calibrated threshold (model.json threshold is null): "
                "run `python -m training calibrate` before converting, or give --threshold T "
                "(or [matcher] threshold in the config)"
            )
        return cls(
            centring=Centring.from_meta(meta),
            cohort=load_cohort(bundle_dir, meta),
            target_far=adaptation.target_far if adaptation is not None else 0.01,
            bundle_threshold=meta.threshold,
            fixed_threshold=fixed_threshold,
            ambiguity_margin=ambiguity_margin,
        )

    @property
    def adaptive(self) -> bool:
        return self.centring.enabled or self.cohort is not None

    def decide(self, views: np.ndarray, labels: Sequence[str], mu: np.ndarray | None):
        """The threshold for these views (raw unit rows) centred on `mu`."""
        if self.fixed_threshold is not None:
            return ThresholdDecision(float(self.fixed_threshold), FIXED, "set in the configuration")
        if self.adaptive:
            cohort = None if self.cohort is None else centre(self.cohort, mu)
            found = adaptive_threshold(centre(views, mu), labels, cohort, self.target_far)
            if found is not None:
                n = len(set(labels))
                why = f"{self.target_far:.0%} false accepts estimated from {n} product(s): "
                return ThresholdDecision(found.value, ADAPTIVE, why + found.explain())
            if self.bundle_threshold is None:
                return ThresholdDecision(
                    1.0, ADAPTIVE, "no products enrolled yet: everything is unknown"
                )
            return ThresholdDecision(
                float(self.bundle_threshold),
                BUNDLE,
                "too few products for the adaptive rule (it needs a cohort or 2 products)",
            )
        assert self.bundle_threshold is not None  # checked in from_bundle
        return ThresholdDecision(float(self.bundle_threshold), BUNDLE, "calibrated at conversion")

    def build(self, views: np.ndarray, labels: Sequence[str]) -> tuple[Matcher, ThresholdDecision]:
        """A matcher over these views (raw unit embeddings) and the threshold it uses."""
        views = np.asarray(views, dtype=np.float32)
        if len(labels) == 0:
            dim = (
                len(self.centring.domain_mean) if self.centring.enabled else max(views.shape[-1], 1)
            )
            views = np.zeros((0, dim), np.float32)
        mu = self.centring.mean_for(views)
        decision = self.decide(views, labels, mu)
        matcher = Matcher(
            views,
            list(labels),
            threshold=decision.value,
            ambiguity_margin=self.ambiguity_margin,
            centre=mu,
        )
        return matcher, decision
