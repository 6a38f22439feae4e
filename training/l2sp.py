"""L2-SP while fine-tuning (`fit --l2sp A`): weight decay towards the starting weights.

Li, Grandvalet and Davoine (ICML 2018), "Explicit inductive bias for transfer learning with
convolutional networks": instead of decaying the backbone's weights towards zero, decay them
towards the pretrained ones, so fine-tuning moves them only as far as the new task pays for:

    A * sum over the backbone's non-BatchNormalization weights of (w - w_start)^2

(the paper's alpha/2 written as A). The anchor is taken when the regulariser is attached, before
any training. Only trainable weights count: a frozen weight is its anchor anyway. The regularisers
sit on the variables, not in the layers' configs, and are detached before the run is saved: the
extractor written is the ordinary one.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .model import get_backbone


class L2SP(keras.regularizers.Regularizer):
    """strength * sum((x - anchor)^2) for one variable."""

    def __init__(self, anchor: np.ndarray, strength: float) -> None:
        if not strength > 0:
            raise ValueError(f"--l2sp strength must be > 0, got {strength}")
        self.anchor = np.array(anchor, dtype=np.float32, copy=True)
        self.strength = float(strength)

    def __call__(self, x: Any) -> Any:
        return self.strength * keras.ops.sum(keras.ops.square(x - self.anchor))

    def get_config(self) -> dict[str, Any]:
        # The anchor is a weight-sized array: it is never serialised (detach before saving).
        return {"strength": self.strength}


def _anchored_variables(extractor: keras.Model) -> list[Any]:
    out = []
    for layer in get_backbone(extractor).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            continue  # frozen while fine-tuning a pretrained backbone (see model.py)
        out.extend(layer.weights)
    return out


def attach_l2sp(extractor: keras.Model, strength: float) -> int:
    """Anchor every non-BN backbone weight at its current value. Returns how many values."""
    count = 0
    for var in _anchored_variables(extractor):
        var.regularizer = L2SP(keras.ops.convert_to_numpy(var), strength)
        count += int(np.prod(var.shape))
    return count


def detach_l2sp(extractor: keras.Model) -> None:
    """Remove the regularisers `attach_l2sp` set (idempotent)."""
    for var in _anchored_variables(extractor):
        if isinstance(var.regularizer, L2SP):
            var.regularizer = None
