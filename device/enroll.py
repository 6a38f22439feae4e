"""Adding a product: guided on the console from the camera, or from photos taken elsewhere.

Guided enrollment captures every view from a stable placement through exactly the detection and
crop path recognition uses (`ViewCapturer`), refuses a view nearly identical to one already taken
(cosine above `duplicate_cosine`: the product was not turned), and stores the product with all its
views in one transaction at the end: interrupting it (Ctrl-C, SIGTERM, closed input) stores nothing.
Enrollment from photos stores each product in its own transaction: interrupted part way, it says
which products were stored, and `skip_existing` (`--skip-existing`) adds the rest on a re-run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .background import BackgroundDetector, Detection
from .camera import FrameSource
from .config import Config
from .crop import object_crop
from .enroll_session import EnrollSession
from .errors import CameraError, NearDuplicateView
from .folders import product_images
from .gallery import EmbedderLike, Gallery, new_product_name, product_name
from .images import list_images, load_image
from .placement import Action, PlacementTracker

logger = logging.getLogger(__name__)


class EnrollAborted(Exception):  # noqa: N818 - an outcome, not a fault
    """The person stopped the enrollment (or the camera/source ended): nothing was stored."""


class NothingNewError(ValueError):
    """--append: every photo of the product is already stored (a near-duplicate of a view)."""


class EnrollInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM part way through enrollment from photos.

    Each product is stored whole or not at all, so after an interruption some products may be
    stored and the others not; `summary()` says which, and how to add the rest without storing the
    first ones twice."""

    def __init__(self, stored: list[str], not_stored: list[str], *, append: bool = False) -> None:
        super().__init__(f"stored {len(stored)} of {len(stored) + len(not_stored)} products")
        self.stored = stored
        self.not_stored = not_stored
        self.append = append

    def summary(self) -> str:
        return progress_summary(self.stored, self.not_stored, append=self.append)


def _name_list(names: list[str]) -> str:
    # Whole: after an interruption the person needs every name, not the first few.
    return ", ".join(names)


def progress_summary(stored: list[str], not_stored: list[str], *, append: bool = False) -> str:
    """What an enrollment from photos that stopped part way did store, and how to go on."""
    total = len(stored) + len(not_stored)
    if not stored:
        return "nothing was stored."
    if append:
        return (
            f"views were added to {len(stored)} of {total} products: {_name_list(stored)}; not "
            f"to: {_name_list(not_stored) or 'none'}. Run the same command again: photos whose "
            "views are already stored are skipped as near-duplicates, so nothing is added twice."
        )
    return (
        f"stored {len(stored)} of {total} products: {_name_list(stored)}; not stored: "
        f"{_name_list(not_stored) or 'none'}. Each product is stored whole or not at all: run the "
        "same command again with --skip-existing to add the others without storing these twice."
    )


class ViewCapturer:
    """Reads frames until an object is stable, then crops it (the recognition crop path)."""

    def __init__(
        self,
        source: FrameSource,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.source = source
        self.config = config
        self.detector = BackgroundDetector(config.detector, config.camera.roi)
        self.tracker = PlacementTracker(config.placement)
        self._clock = clock
        self._should_stop = should_stop

    def _read(self) -> np.ndarray:
        if self._should_stop():
            raise EnrollAborted("stopped")
        frame = self.source.read()
        if frame is None:
            raise EnrollAborted("the video source ended before the view was captured")
        return frame

    def learn_background(self) -> None:
        self.detector.reset()
        while not self.detector.ready:
            self.detector.detect(self._read())

    def capture(self, timeout_s: float) -> tuple[np.ndarray, Detection, np.ndarray]:
        """(frame, detection, crop) of the next placement that stays stable."""
        self.tracker.reset()
        deadline = self._clock() + timeout_s
        while True:
            frame = self._read()
            det = self.detector.detect(frame)
            action = self.tracker.update(det)
            if det is None and self.tracker.is_empty:
                self.detector.adapt()
            if action is Action.RECOGNISE and det is not None:
                crop, _ = object_crop(frame, det.box, self.config.detector.pad)
                return frame, det, crop
            if self._clock() > deadline:
                raise TimeoutError(
                    f"no steady object within {timeout_s:.0f} s: place the product inside the "
                    "camera's view and keep it still"
                )


def guided_enroll(
    name: str,
    *,
    source: FrameSource,
    embedder: EmbedderLike,
    gallery: Gallery,
    config: Config,
    views: int | None = None,
    code: str | None = None,
    append: bool = False,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
    should_stop: Callable[[], bool] = lambda: False,
    max_refusals: int = 5,
) -> int:
    """Guide a person through `views` captures and store the product; its id.

    `ask` shows a prompt and waits for Enter ("q" aborts); `say` shows progress. Raises
    EnrollAborted (nothing stored) on "q", closed input, a stop request or the end of the source."""
    n_views = views or config.enroll.views
    session = EnrollSession(name, n_views, config.enroll.duplicate_cosine, code=code, append=append)
    session.check_name(gallery)
    cap = ViewCapturer(source, config, should_stop=should_stop)

    def wait_enter(prompt: str) -> None:
        try:
            answer = ask(f"{prompt}, then press Enter (q to quit): ")
        except EOFError as exc:
            raise EnrollAborted("input closed") from exc
        if answer.strip().lower() in ("q", "quit"):
            raise EnrollAborted("quit")

    wait_enter("Clear the area in front of the camera (nothing there)")
    say("Learning the empty scene...")
    cap.learn_background()

    while not session.done:
        wait_enter(f"[{len(session.views) + 1}/{n_views}] {session.prompt()}")
        try:
            frame, det, crop = cap.capture(config.enroll.timeout_s)
        except (TimeoutError, CameraError) as exc:
            say(f"  {exc}; let us try that view again")
            continue
        emb = np.asarray(embedder.embed(crop), dtype=np.float32)
        _, crop_box = object_crop(frame, det.box, config.detector.pad)
        try:
            session.offer(crop, det.box, crop_box, emb)
        except NearDuplicateView as exc:
            say(f"  {exc}")
            if session.refusals >= max_refusals:
                raise EnrollAborted(f"{session.refusals} views refused as duplicates") from exc
            continue
        say(f"  view {len(session.views)}/{n_views} taken (box {list(det.box)})")

    pid = session.commit(gallery, embedder.embedding_id, crop_size=config.gallery.crop_size)
    name = session.name
    taken = session.views
    say(f"Stored {name!r} with {len(taken)} views.")
    return pid


@dataclass(frozen=True)
class PhotoEnrollResult:
    name: str
    views: int
    skipped: list[str]  # "path: reason"


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def product_folders(folder: Path, name: str | None) -> list[tuple[str, list[Path]]]:
    """(product, photos): the folder's images as one product, or one product per sub-folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of product photos")
    direct = list_images(folder)
    subs = product_images(folder)
    if direct and subs:
        # One stray photo would otherwise make the whole tree one product (the sub-folders
        # ignored): say which photos and folders are mixed, and store nothing.
        raise ValueError(
            f"{folder} holds both photos ({_few([p.name for p in direct])}) and product folders "
            f"({_few([n for n, _ in subs])}): put the photos in a folder of their own (one "
            "folder per product), or enroll that folder alone"
        )
    if direct:
        product = name if name is not None else folder.resolve().name
        new_product_name(product)  # checked before any photo is embedded
        return [(product, direct)]
    if not subs:
        raise ValueError(f"{folder} holds no images (expected DIR/*.jpg or DIR/<product>/*.jpg)")
    if name is not None:
        raise ValueError(
            f"{folder} holds one sub-folder per product ({len(subs)}); they are named after the "
            "sub-folders, so leave out the product name"
        )
    seen: dict[str, str] = {}
    for sub_name, _ in subs:
        try:
            key = new_product_name(sub_name)
        except ValueError as exc:
            raise ValueError(f"the sub-folder {sub_name!r} of {folder}: {exc}") from exc
        other = seen.setdefault(key, sub_name)
        if other != sub_name:  # checked before any photo is embedded
            raise ValueError(
                f"the sub-folders {other!r} and {sub_name!r} of {folder} name the same product "
                "(names are stored trimmed and Unicode-normalised): merge or rename them"
            )
    return subs


def enroll_from_images(
    folder: str | Path,
    *,
    embedder: EmbedderLike,
    gallery: Gallery,
    config: Config,
    name: str | None = None,
    code: str | None = None,
    append: bool = False,
    skip_existing: bool = False,
    say: Callable[[str], None] = print,
) -> list[PhotoEnrollResult]:
    """Add products from photos (each photo is the crop); each product stored in one transaction.

    `skip_existing` leaves out the products already in the database (to finish an interrupted
    enrollment); `append` adds views to them instead. Raises EnrollInterrupted (a
    KeyboardInterrupt) when interrupted part way, naming what was stored and what was not."""
    if append and skip_existing:
        raise ValueError(
            "--append adds views to the products already stored, --skip-existing leaves them "
            "out: give only one"
        )
    plan = product_folders(Path(folder), name)
    existing = {p.name for p in gallery.products()}
    clash = [n for n, _ in plan if product_name(n) in existing]
    if clash and skip_existing:
        say(f"Skipping {len(clash)} product(s) already stored: {_name_list(clash)}")
        plan = [(n, paths) for n, paths in plan if product_name(n) not in existing]
    elif clash and not append:
        raise ValueError(
            f"product(s) {clash} already exist: use --skip-existing to add only the others, "
            "--append to add views to them, or delete them"
        )
    results: list[PhotoEnrollResult] = []
    stored: list[str] = []
    unchanged: list[str] = []  # --append: every photo already stored
    current: str | None = None  # the product being stored when an interruption comes
    views_before: int | None = None
    # --append: the stored views, read once, for the near-duplicate check of each product's photos
    stored_emb, stored_labels = gallery.load(embedder.embedding_id) if append else (None, [])
    try:
        for product, paths in plan:
            current, views_before = product, None
            prior = None
            if stored_emb is not None:
                key = product_name(product)
                mine = [i for i, label in enumerate(stored_labels) if label == key]
                prior = stored_emb[mine] if mine else None
            try:
                views, skipped = _photo_views(product, paths, embedder, config, prior)
            except NothingNewError:
                # Photos that could not be read were named in warnings: count them here too.
                say(f"Nothing new for {product!r}: its usable photos are already stored")
                unchanged.append(product)
                continue
            views_before = stored_views(gallery, product)
            gallery.add_product(
                product,
                views,
                embedder.embedding_id,
                code=code,
                append=append,
                crop_size=config.gallery.crop_size,
            )
            stored.append(product)
            current = None
            total = views_before + len(views) if append else len(views)
            say(
                f"Stored {product!r} with {len(views)} views"
                + (f" ({total} in all)" if append and views_before else "")
                + (f" ({len(skipped)} skipped)" if skipped else "")
            )
            results.append(PhotoEnrollResult(product, len(views), skipped))
    except KeyboardInterrupt as exc:
        # The signal may land after add_product committed but before it returned: ask the
        # database rather than trusting the loop's bookkeeping.
        if (
            current is not None
            and current not in stored
            and views_before is not None
            and stored_views(gallery, current) > views_before
        ):
            stored.append(current)
        not_stored = [n for n, _ in plan if n not in stored and n not in unchanged]
        raise EnrollInterrupted(stored, not_stored, append=append) from exc
    except Exception:
        if stored:  # the products before the failing one are in the database: say so
            not_stored = [n for n, _ in plan if n not in stored and n not in unchanged]
            say(f"Stopped part way: {progress_summary(stored, not_stored, append=append)}")
        raise
    return results


def stored_views(gallery: Gallery, name: str) -> int:
    """How many views of the product `name` are stored (0 when there is no such product)."""
    product = gallery.product(name)
    return 0 if product is None else product.n_views


def select_views(
    names: list[str],
    images: list[np.ndarray],
    embeddings: np.ndarray,
    duplicate_cosine: float,
    stored: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], int]:
    """(embedding, image) of each photo worth storing, the skipped ones ("name: why"), and how
    many were skipped as already stored. A photo nearly identical to an earlier one, or to one of
    the `stored` views, is skipped."""
    views: list[tuple[np.ndarray, np.ndarray]] = []
    skipped: list[str] = []
    already = 0
    for name, image, emb in zip(names, images, embeddings, strict=True):
        emb = np.asarray(emb, dtype=np.float32)
        if stored is not None and stored.size:
            best = float((stored @ emb).max())
            if best > duplicate_cosine:
                skipped.append(f"{name}: near-duplicate of a view already stored ({best:.3f})")
                already += 1
                continue
        if views:
            sims = np.stack([v[0] for v in views]) @ emb
            if float(sims.max()) > duplicate_cosine:
                skipped.append(f"{name}: near-duplicate of another photo ({float(sims.max()):.3f})")
                continue
        views.append((emb, image))
    return views, skipped, already


def photo_side(embedder: EmbedderLike, config: Config) -> int:
    """The longest side a photo needs: the stored crop's ([gallery] crop_size), or the model's
    input when it is larger; more pixels would change neither the view nor its embedding."""
    spec = getattr(getattr(embedder, "meta", None), "input", None)
    model_side = max(int(spec.height), int(spec.width)) if spec is not None else 0
    return max(config.gallery.crop_size, model_side)


def _photo_views(
    product: str,
    paths: list[Path],
    embedder: EmbedderLike,
    config: Config,
    stored: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """(embedding, photo) of each usable photo of a product, and the skipped ones ("path: why").
    A photo nearly identical to another, or to one of the `stored` views, is skipped."""
    unreadable: list[str] = []
    names: list[str] = []
    images: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    side = photo_side(embedder, config)
    for path in paths:
        try:
            # Refused undecoded when too large, and reduced while decoded: only one photo is ever
            # held at full size, and every kept view is at most `side` pixels a side.
            image = load_image(path, max_pixels=config.enroll.max_image_pixels, max_side=side)
        except ValueError as exc:
            unreadable.append(f"{path}: {exc}")
            continue
        try:
            embs.append(np.asarray(embedder.embed(image), dtype=np.float32))
        except ValueError as exc:  # e.g. a photo too small to embed: skipped like an unreadable one
            unreadable.append(f"{path}: {exc}")
            continue
        names.append(str(path))
        images.append(image)
    views, dupes, already = select_views(
        names, images, np.asarray(embs), config.enroll.duplicate_cosine, stored
    )
    skipped = unreadable + dupes
    for line in skipped:
        logger.warning("skipped %s", line)
    if not views:
        if already:
            # Re-running an --append enrollment: what could be added was added before.
            raise NothingNewError(f"{product}: all its usable photos are already stored")
        raise ValueError(f"{product}: none of its {len(paths)} photos could be used")
    return views, skipped
