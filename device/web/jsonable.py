"""Turning the device's result objects (dataclasses, tuples, numpy scalars) into JSON values."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: dataclasses and mappings as objects, sequences as lists; bytes and
    arrays (crops, embeddings) are left out: the API serves images from their own URLs."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: jsonable(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not isinstance(getattr(obj, f.name), (bytes, bytearray, np.ndarray))
        }
    if isinstance(obj, Mapping):
        return {
            str(k): jsonable(v)
            for k, v in obj.items()
            if not isinstance(v, (bytes, bytearray, np.ndarray))
        }
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    return str(obj)
