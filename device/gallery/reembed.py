"""Re-embedding the stored views from their crops when the model changes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np

from .products import ProductStore
from .records import EmbedderLike, decode_crop_or_none, embedding_blob

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
        """Re-embed every view not made by `embedder`'s model from its stored crop; the count.

        Each batch is embedded, then written in its own short transaction: another process can
        still enroll meanwhile, and work done before an interruption (a stop, a start timeout)
        is kept, so the next call carries on. A view changed in between is left for the next
        call. `progress(done, total)` is called after each batch (the service uses it to keep
        systemd's start timeout and watchdog satisfied). A view whose crop cannot be decoded is
        kept for its old model (a WARNING names it), and a product left without views of the new
        model is named in a WARNING too."""
        model_id = embedder.model_id
        with self._failures("re-embedding the views for the new model"):
            rows = self.conn.execute(
                "SELECT v.id, v.model_id, p.id, p.name FROM views v JOIN products p "
                "ON p.id = v.product_id WHERE v.model_id != ? ORDER BY v.id",
                (model_id,),
            ).fetchall()
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
        unreadable: list[tuple[int, str, int, str]] = []  # view id, its model, product id, name
        last_log = time.monotonic()
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            keep: list[tuple[np.ndarray, int, str]] = []  # image, view id, its model
            for view_id, old_model, pid, name in chunk:
                with self._failures("reading the stored crops"):
                    row = self.conn.execute(
                        "SELECT crop FROM views WHERE id = ?", (view_id,)
                    ).fetchone()
                if row is None:
                    continue  # deleted meanwhile
                image = decode_crop_or_none(row[0])
                if image is None:
                    # Kept, not deleted: it still matches under its own model (a rollback with
                    # deploy-model.sh), and a failure to decode may be passing (memory).
                    logger.warning(
                        "product %r: the stored crop of view %d cannot be decoded, so the view "
                        "cannot be re-embedded for the new model; it is kept for its old model",
                        name,
                        view_id,
                    )
                    unreadable.append((view_id, old_model, pid, name))
                    self._undecodable.add(view_id)
                    continue
                keep.append((image, view_id, old_model))
            if keep:
                embs = np.asarray(embedder.embed_many([c for c, _, _ in keep]), dtype=np.float32)
                updates = [
                    (embedding_blob(emb), int(emb.size), model_id, view_id, old_model)
                    for emb, (_, view_id, old_model) in zip(embs, keep, strict=True)
                ]
                with self.transaction("re-embedding the views for the new model") as c:
                    c.executemany(
                        "UPDATE views SET embedding = ?, dim = ?, model_id = ? "
                        "WHERE id = ? AND model_id = ?",
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
                    for _, _, pid, name in unreadable
                    if self.conn.execute(
                        "SELECT 1 FROM views WHERE product_id = ? AND model_id = ?",
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
