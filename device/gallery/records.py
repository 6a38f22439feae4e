"""The values the product database stores and hands out, and their encodings (names, times,
embeddings, JPEG crops)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np

from ..errors import GalleryError


class EmbedderLike(Protocol):
    """What the device needs of a model: `device.embedder.Embedder` or a test double."""

    model_id: str  # the model file's sha256 (in events)
    # What stored embeddings are keyed by: changes with the model file and with the preprocessing
    # the bundle declares (an edited colour order makes other embeddings): device.bundle.
    embedding_id: str

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray: ...

    def embed_many(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Product:
    id: int
    name: str
    code: str | None
    created: str
    n_views: int


@dataclass(frozen=True)
class View:
    id: int
    product_id: int
    # The embedding the view was stored with (enrolled or imported): its key (an embedding id,
    # or a model id for views stored before schema 6) and size. Other models may have added
    # their own embeddings of the view since.
    model_id: str
    dim: int
    created: str


def product_name(text: str) -> str:
    """A product name as stored and looked up: trimmed, and in Unicode NFC, so "mjölk" typed on
    the device and "mjölk" from a folder copied off a Mac (decomposed) are one product."""
    return unicodedata.normalize("NFC", text).strip()


# Characters a product name may not hold: controls (newline, tab, escape, ...) and line or
# paragraph separators. They would break the tables and line-based output that show names.
_NOT_IN_NAMES = frozenset({"Cc", "Zl", "Zp"})


def new_product_name(text: str) -> str:
    """A name for a product being stored or renamed: `product_name(text)`, refused (ValueError,
    showing the name as given) when blank or holding a control character. The one rule for every
    way a name comes in: enroll (console, camera session, web), a photo folder's name, rename,
    import."""
    bad = sorted({c for c in text if unicodedata.category(c) in _NOT_IN_NAMES})
    if bad:
        which = ", ".join(unicodedata.name(c, f"U+{ord(c):04X}") for c in bad)
        raise ValueError(
            f"the product name {text!r} holds a control character ({which}): a name is one line "
            "of printable text"
        )
    name = product_name(text)
    if not name:
        raise ValueError(f"the product name {text!r} is blank: a product needs a name")
    return name


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_jpeg(image_bgr: np.ndarray, max_side: int = 320, quality: int = 90) -> bytes:
    import cv2

    from ..crop import shrink

    ok, buf = cv2.imencode(".jpg", shrink(image_bgr, max_side), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the crop as JPEG")
    return buf.tobytes()


def decode_crop_or_none(data: object) -> np.ndarray | None:
    """The BGR image of a stored crop; None when it is not a readable image."""
    import cv2

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        return None  # imdecode raises instead of returning None on an empty buffer
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def decode_jpeg(data: bytes) -> np.ndarray:
    image = decode_crop_or_none(data)
    if image is None:
        raise GalleryError("a stored crop is not a readable JPEG: the database is damaged")
    return image


def embedding_blob(emb: np.ndarray) -> bytes:
    v = np.asarray(emb, dtype="<f4").reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("an embedding holds NaN or infinite values")
    return v.tobytes()
