"""Embedding the stored views from their crops for a model that has not embedded them yet (the
model changed): beside the other models' embeddings, never over them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

from .products import ProductStore
from .records import EmbedderLike, decode_crop_or_none, embedding_blob, utc_now

logger = logging.getLogger(__name__)


class Reembedding(ProductStore):
    _undecodable: set[int]  # views whose crop failed to decode in this process (Gallery.__init__)

    def reembed(
        self,
        embedder: EmbedderLike,
        *,
        batch: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Embed every view that has no embedding of `embedder` (its `embedding_id`) from its
        stored crop, beside the other models' embeddings; the count.

        Each batch is embedded, then written in its own short transaction: another process can
        still enroll meanwhile, and work done before an interruption (a stop, a start timeout)
        is kept, so the next call carries on. A view deleted in between is skipped. `progress(done, total)` is called after each batch (the service uses it to keep
        systemd's start timeout and watchdog satisfied). A view whose crop cannot be decoded is
        kept for its old model (a WARNING names it), and a product left without views of the new
        model is named in a WARNING too."""
        model_id = embedder.embedding_id
        rows = self.views_without(model_id)
        # Views whose crop failed to decode in this process are not tried (and warned) again on
        # every reload; a new process tries them once more.
        todo = [r for r in rows if r[0] not in self._undecodable]
        if not todo:
            return 0
        logger.info(
            "the model changed (now %s): re-embedding %d stored views from their crops",
            model_id[:12],
            len(todo),
        )
        done_views = 0
        unreadable: list[tuple[int, int, str]] = []  # view id, product id, name
        last_log = time.monotonic()
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            keep: list[tuple[np.ndarray, int]] = []  # image, view id
            for view_id, pid, name in chunk:
                crop = self.stored_crop(view_id)
                if crop is None:
                    continue  # deleted meanwhile
                image = decode_crop_or_none(crop)
                if image is None:
                    # Kept, not deleted: it still matches under its own model (a rollback with
                    # deploy-model.sh), and a failure to decode may be passing (memory).
                    logger.warning(
                        "product %r: the stored crop of view %d cannot be decoded, so the view "
                        "cannot be re-embedded for the new model; it is kept for its old model",
                        name,
                        view_id,
                    )
                    unreadable.append((view_id, pid, name))
                    self._undecodable.add(view_id)
                    continue
                keep.append((image, view_id))
            if keep:
                embs = np.asarray(embedder.embed_many([c for c, _ in keep]), dtype=np.float32)
                now = utc_now()
                updates = [
                    (model_id, embedding_blob(emb), int(emb.size), now, view_id)
                    for emb, (_, view_id) in zip(embs, keep, strict=True)
                ]
                with self.transaction("re-embedding the views for the new model") as c:
                    # A view deleted meanwhile gets none; one embedded meanwhile by another
                    # process keeps that one.
                    c.executemany(
                        "INSERT OR IGNORE INTO embeddings(view_id, model_id, embedding, dim, "
                        "created) SELECT id, ?, ?, ?, ? FROM views WHERE id = ?",
                        updates,
                    )
                    self._bump(c)
                done_views += len(updates)
            done = min(start + batch, len(todo))
            if progress is not None:
                progress(done, len(todo))
            if time.monotonic() - last_log > 2.0 or done == len(todo):
                logger.info("re-embedded %d/%d views", done, len(todo))
                last_log = time.monotonic()
        with self._failures("checking the re-embedded products"):
            emptied = sorted(
                {
                    name
                    for _, pid, name in unreadable
                    if self.conn.execute(
                        "SELECT 1 FROM views v JOIN embeddings e ON e.view_id = v.id "
                        "WHERE v.product_id = ? AND e.model_id = ?",
                        (pid, model_id),
                    ).fetchone()
                    is None
                }
            )
        for name in emptied:
            logger.warning(
                "product %r has no views for this model and cannot be recognised: enroll it "
                "again with --append (`python -m device enroll %s --append`) or delete it",
                name,
                json.dumps(name),
            )
        return done_views
