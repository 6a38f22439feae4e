"""One guided enrollment: the views taken so far, near-duplicate refusal, and the product stored
whole or not at all. Used by the console `enroll` (device/enroll.py) and by the running service
(commands StartEnroll / CaptureView / FinishEnroll / CancelEnroll).

A session is owned by one thread at a time: the console's, or the loop thread in the service
(commands run there), so it holds no lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from .crop import Box
from .errors import NearDuplicateView, ProductExists
from .gallery import Gallery, new_product_name

PROMPTS = (
    "Place the product in front of the camera",
    "Turn it a quarter turn",
    "Turn it another quarter turn",
    "Turn it a last quarter turn",
    "Lay it on its side",
    "Turn it upside down",
)


@dataclass(frozen=True, eq=False)  # holds arrays: no field-wise ==
class CapturedView:
    crop: np.ndarray
    box: Box  # the object's box in the frame
    crop_box: Box  # the padded square actually cropped
    embedding: np.ndarray


@dataclass(frozen=True)
class CapturedViewInfo:
    """What a CaptureView command returns: the view's number and its crop as JPEG."""

    session_id: str
    index: int  # 1-based
    of: int  # views wanted
    box: Box
    crop_jpeg: bytes


@dataclass
class EnrollSession:
    name: str
    views_wanted: int
    duplicate_cosine: float
    code: str | None = None
    append: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    views: list[CapturedView] = field(default_factory=list)
    refusals: int = 0

    def __post_init__(self) -> None:
        self.name = new_product_name(self.name)  # refused at the start, not after the views
        if self.views_wanted < 1:
            raise ValueError("an enrollment needs at least 1 view")

    def check_name(self, gallery: Gallery) -> None:
        """ProductExists unless `append` (checked at the start, and again when storing)."""
        if not self.append and gallery.product(self.name) is not None:
            raise ProductExists(
                f"a product named {self.name!r} already exists: choose another name, add views "
                "with --append, or `products delete` it first"
            )

    @property
    def done(self) -> bool:
        return len(self.views) >= self.views_wanted

    def prompt(self) -> str:
        i = len(self.views)
        return PROMPTS[i] if i < len(PROMPTS) else "Show another side of the product"

    def offer(self, crop: np.ndarray, box: Box, crop_box: Box, embedding: np.ndarray) -> int:
        """Take a view (its 1-based number) or raise NearDuplicateView (counted in `refusals`)."""
        emb = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if self.views:
            sims = np.stack([v.embedding for v in self.views]) @ emb
            j = int(np.argmax(sims))
            if sims[j] > self.duplicate_cosine:
                self.refusals += 1
                raise NearDuplicateView(
                    f"refused: this view looks the same as view {j + 1} (similarity "
                    f"{sims[j]:.3f} > {self.duplicate_cosine}); turn the product further"
                )
        self.views.append(CapturedView(crop, box, crop_box, emb))
        return len(self.views)

    def commit(self, gallery: Gallery, model_id: str, *, crop_size: int = 320) -> int:
        """Store the product with every view taken, in one transaction, the embeddings under
        `model_id` (the embedder's `embedding_id`); its id."""
        if not self.views:
            raise ValueError(f"no views of {self.name!r} were taken: nothing to store")
        return gallery.add_product(
            self.name,
            [(v.embedding, v.crop) for v in self.views],
            model_id,
            code=self.code,
            append=self.append,
            crop_size=crop_size,
        )
