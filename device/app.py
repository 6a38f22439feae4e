"""The device as one application object: the command line, a web layer and the event outputs all
drive a `DeviceApp` instead of opening the model, the database and the camera themselves.

Who owns what:
- the model (`embedder`): opened on first use. While `run` is going, only the loop thread embeds
  (the TFLite interpreter is not thread-safe): other threads' embedding work is submitted to the
  loop (`commands.Call`). Otherwise calls are serialised by `_embed_lock`.
- the database: one `Gallery` connection per thread (`_gallery()`), so that the loop's
  transactions and another thread's writes never share a connection. All closed by `close()`.
- `bus` (EventBus: stdout line, event row, saved crops, plus what others `add`) and `hub`
  (FrameHub): created here, written by the loop thread, read by anyone.
- `commands`: the queue the loop drains once per frame (`submit`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .closing import Closing
from .commands import Call, CommandQueue
from .config import Config
from .errors import GalleryError, ProductNotFound
from .events import Event, EventBus
from .framehub import FrameHub
from .gallery import EmbedderLike, Gallery, Product, View

logger = logging.getLogger(__name__)

DeviceConfig = Config  # the contract's name for the device's configuration
ProductInfo = Product  # id, name, code, created, n_views
ViewInfo = View  # id, product_id, model_id, dim, created (its crop: DeviceApp.view_crop_jpeg)

EmbedderFactory = Callable[[str, int], Any]


def load_embedder(path: str, num_threads: int) -> Any:
    """The real model: an `Embedder` over the bundle at `path` (its folder, model.json or .tflite)."""
    from .bundle import bundle_dir_of
    from .embedder import Embedder

    return Embedder(bundle_dir_of(path), num_threads=num_threads)


@dataclass(frozen=True)
class EnrollResult:
    product: ProductInfo
    views_added: int
    skipped: list[str] = field(default_factory=list)  # "image N: why"


@dataclass(frozen=True)
class CheckReport:
    threshold: float
    threshold_source: str
    checks: list[Any]  # device.audit.ProductCheck, one per product
    reject_all: float | None  # the score a left-out product reaches against the others


class DeviceApp(Closing):
    """See the module docstring. A context manager; `close()` is idempotent."""

    def __init__(
        self,
        config: Config,
        *,
        embedder_factory: EmbedderFactory | None = None,
        create_db: bool = True,
        out: TextIO | None = None,
    ) -> None:
        self.config = config
        self._embedder_factory = embedder_factory or load_embedder
        self._embedder: EmbedderLike | None = None
        self._embed_lock = threading.Lock()  # embedding outside the loop, one call at a time
        self._open_lock = threading.Lock()  # opening the model once
        self._out = out
        self._started = time.monotonic()
        self._lock = threading.Lock()  # guards _galleries and the lazily made bus
        self._galleries: dict[int, Gallery] = {}
        self._bus: EventBus | None = None
        self._event_log: Any = None  # the bus's EventLogSink (the outbox is attached to it)
        self._outputs: Any = None  # device.outputs.Outputs, from `start_outputs`
        self._presence: Any = None  # device.outputs.presence.PresenceWatcher
        self.hub = FrameHub()
        self.commands = CommandQueue()
        self._loop_thread: int | None = None  # ident of the thread inside `run`
        self.service: Any = None  # the running device.service.Service (loop thread's)
        if not create_db and not Path(config.gallery.path).is_file():
            # Reading or changing stored products never creates a database: a mistyped --db
            # must say so, not report an empty product list.
            raise GalleryError(
                f"no product database at {config.gallery.path}: check --db / [gallery] path (a "
                "database is created by `enroll`, `gallery import` or `run`)"
            )

    # --- what it holds ---------------------------------------------------------------------------

    @property
    def embedder(self) -> EmbedderLike:
        """The model, opened on first use (by whichever thread asks first)."""
        with self._open_lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory(
                    self.config.model.path, self.config.model.num_threads
                )
            return self._embedder

    @property
    def meta(self) -> Any:
        """The bundle's BundleMeta (model.json)."""
        return getattr(self.embedder, "meta", None)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def embedding_id(self) -> str:
        """What the stored embeddings of this model are keyed by (device/bundle.py)."""
        return self.embedder.embedding_id

    @property
    def bus(self) -> EventBus:
        """The event bus with the device's outputs (made on first use; add more with `add`)."""
        with self._lock:
            if self._bus is None:
                from .sinks import CropSink, EventLogSink, StdoutSink

                svc = self.config.service
                stages = [CropSink(svc.save_crops, svc.save_crops_keep)] if svc.save_crops else []
                self._event_log = EventLogSink(self.config.gallery.path)
                self._bus = EventBus([StdoutSink(self._out), self._event_log], stages=stages)
            return self._bus

    def start_outputs(self) -> Any:
        """Connect the configured outputs (MQTT, webhooks, GPIO: device/outputs) to the event
        bus; once (`run` calls it). Receivers that are down delay nothing: they are retried in
        the background, and what they owe waits in the outbox."""
        if self._outputs is not None:
            return self._outputs
        from . import __version__
        from .outputs import Outputs
        from .outputs.presence import PresenceWatcher

        bus = self.bus
        outputs = Outputs(self.config, self.config.gallery.path, sw_version=__version__)
        try:
            outputs.start()
            for sink in outputs.sinks():
                bus.add(sink)
        except BaseException:
            outputs.close()
            raise
        self._event_log.outbox = outputs  # each event row now also owes its event to them
        if self.config.mqtt.host:  # "object present" follows the frames
            self._presence = PresenceWatcher(self.hub, outputs.set_present)
        self._outputs = outputs
        return outputs

    def gallery(self) -> Gallery:
        """The calling thread's connection to the product database."""
        key = threading.get_ident()
        with self._lock:
            g = self._galleries.get(key)
            first = not self._galleries
        if g is None:
            g = Gallery(self.config.gallery.path, check=first)
            with self._lock:
                self._galleries[key] = g
        return g

    def close(self) -> None:
        self.commands.close()
        with self._lock:
            bus, self._bus = self._bus, None
            galleries, self._galleries = list(self._galleries.values()), {}
        presence, self._presence = self._presence, None
        outputs, self._outputs = self._outputs, None
        try:
            if presence is not None:
                presence.close()
            if bus is not None:
                bus.close()  # the event log's last rows, and their outbox rows, are written
        finally:
            if outputs is not None:
                outputs.close()  # what is undelivered stays in the outbox for the next start
            for g in galleries:
                g.close()
            emb, self._embedder = self._embedder, None
            if emb is not None and hasattr(emb, "close"):
                emb.close()

    # --- products ----------------------------------------------------------------------------

    def products(self) -> list[ProductInfo]:
        return self.gallery().products()

    def product(self, name_or_id: str | int) -> ProductInfo:
        g = self.gallery()
        p = g.product_by_id(name_or_id) if isinstance(name_or_id, int) else g.product(name_or_id)
        if p is None:
            raise ProductNotFound(
                f"no product named {name_or_id!r} (see `python -m device products list`)"
            )
        return p

    def views(self, product: str | int) -> list[ViewInfo]:
        return self.gallery().views(self.product(product).id)

    def view_crop_jpeg(self, view_id: int) -> bytes:
        return self.gallery().view_crop(view_id)

    def rename(self, product: str | int, new_name: str) -> ProductInfo:
        stored = self.gallery().rename(self.product(product).name, new_name)
        return self.product(stored)

    def set_code(self, product: str | int, code: str | None) -> ProductInfo:
        p = self.product(product)
        self.gallery().set_code(p.name, code)
        return self.product(p.id)

    def delete_product(self, product: str | int) -> None:
        self.gallery().delete(self.product(product).name)

    def delete_view(self, view_id: int) -> None:
        self.gallery().delete_view(view_id)

    # --- the model's work ----------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
        """Run `fn` where embedding is allowed: on the loop thread while `run` is going (it
        drains the commands once per frame, so a batch waits about a frame), else here under
        `_embed_lock`."""
        if self.commands.is_open and threading.get_ident() != self._loop_thread:
            return self.submit(Call(fn)).result(timeout)
        with self._embed_lock:
            return fn()

    def _embedder_here(self) -> EmbedderLike:
        """The embedder for the calling thread: the model itself, or (while the loop runs, on
        another thread) a stand-in that sends each batch to the loop thread."""
        if self.commands.is_open and threading.get_ident() != self._loop_thread:
            return _ViaLoop(self, self.embedder)
        return self.embedder

    def threshold(self) -> tuple[float, str]:
        """The threshold in force and where it comes from: the running loop's (it follows the
        products), or the one the loop would set for the products stored now."""
        rec = getattr(self.service, "recognizer", None)
        if rec is not None:
            decision = rec.decision
        else:
            emb, labels = self.gallery().load(self.embedding_id)
            decision = self._matcher_for(emb, labels)[1]
        return decision.value, f"{decision.source}: {decision.reason}"

    def _matcher_for(self, emb: np.ndarray, labels: list[str]) -> tuple[Any, Any]:
        from .service import matching_policy

        policy = matching_policy(self.config, self.embedder)
        if not labels:
            emb = np.zeros((0, 1), np.float32)
        return policy.build(emb, labels)

    def _current_embeddings(self) -> tuple[np.ndarray, list[str]]:
        """This model's embeddings of every stored view. Read only: views it has not embedded
        yet are embedded in memory, a batch at a time, never stored (`run` stores them, once,
        for the model it runs), so `products check --model OTHER` changes nothing."""
        g = self.gallery()
        key = self.embedding_id
        emb, labels = g.load(key)
        parts = [emb] if labels else []
        embedder = None
        for names, images in g.crops_without(key):
            if images:
                embedder = embedder or self._embedder_here()
                parts.append(np.asarray(embedder.embed_many(images), dtype=np.float32))
                labels = [*labels, *names]
        return (np.concatenate(parts) if parts else emb), labels

    def check(self) -> CheckReport:
        """Each product's nearest look-alike and own-view agreement, with the threshold in force."""
        from .audit import check_products, reject_all_threshold
        from .vectors import centre

        emb, labels = self._current_embeddings()
        matcher, decision = self._matcher_for(emb, labels)
        if decision.source == "the model bundle" and matcher.centre is not None:
            logger.warning("adaptive threshold not in force: %s", decision.reason)
        # Scores as the matcher compares them (centred for bundles that centre).
        checks = check_products(centre(emb, matcher.centre), labels) if labels else []
        source = f"{decision.source}: {decision.reason}"
        return CheckReport(decision.value, source, checks, reject_all_threshold(checks))

    def enroll_images(
        self,
        name: str,
        images: Sequence[np.ndarray],
        code: str | None = None,
        *,
        append: bool = False,
    ) -> EnrollResult:
        """Store a product from photos (each image is the crop), in one transaction. Photos nearly
        identical to another (or, with `append`, to a stored view) are skipped and named."""
        from .enroll import NothingNewError, select_views

        if not images:
            raise ValueError("no images given")
        g = self.gallery()
        if not append and g.product(name) is not None:
            from .errors import ProductExists

            raise ProductExists(
                f"a product named {name.strip()!r} already exists: choose another name, or "
                "append views to it"
            )
        stored = None
        if append:
            existing = g.product(name)
            emb, labels = g.load(self.embedding_id)
            if existing is not None:
                mine = [i for i, label in enumerate(labels) if label == existing.name]
                stored = emb[mine] if mine else None
        embs = self._embedder_here().embed_many(list(images))
        views, skipped, already = select_views(
            [f"image {i + 1}" for i in range(len(images))],
            list(images),
            np.asarray(embs, dtype=np.float32),
            self.config.enroll.duplicate_cosine,
            stored,
        )
        if not views:
            if already:
                raise NothingNewError(f"{name}: all the images are already stored")
            raise ValueError(f"{name}: none of the {len(images)} images could be used")
        pid = g.add_product(
            name,
            views,
            self.embedding_id,
            code=code,
            append=append,
            crop_size=self.config.gallery.crop_size,
        )
        return EnrollResult(self.product(pid), len(views), skipped)

    # --- files -------------------------------------------------------------------------------

    def export_gallery(self, path: str | Path, *, overwrite: bool = False) -> int:
        from .transfer import export_gallery

        return export_gallery(self.gallery(), path, overwrite=overwrite)

    def import_gallery(self, path: str | Path | Any, *, replace: bool = False) -> Any:
        """Add the products of an export file (or a `read_gallery_export` result); ImportResult."""
        from .transfer import import_gallery, read_gallery_export

        export = read_gallery_export(path) if isinstance(path, (str, Path)) else path
        return import_gallery(self.gallery(), export, self._embedder_here(), replace=replace)

    # --- events and state ----------------------------------------------------------------------

    def events(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        product: str | None = None,
        status: str | None = None,
    ) -> list[Event]:
        """Stored events, oldest first: the `limit` newest after skipping `offset`."""
        rows = self.gallery().events(limit, offset=offset, label=product, status=status)
        return [Event.from_dict(r) for r in rows]

    def status(self) -> dict[str, Any]:
        path = Path(self.config.gallery.path)
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        svc = self.service
        stats = getattr(svc, "stats", None)
        try:
            threshold, source = self.threshold()
        except ValueError:
            threshold, source = None, "none: the bundle is not calibrated"
        g = self.gallery()
        return {
            "model": {
                "id": self.model_id,
                "name": getattr(self.meta, "name", None),
            },
            "threshold": threshold,
            "threshold_source": source,
            "running": self.commands.is_open,
            "camera": getattr(svc, "camera_state", "stopped") if svc is not None else "stopped",
            "fps": round(self.hub.fps(), 2),
            "frames": getattr(stats, "frames", 0),
            "events": getattr(stats, "n_events", 0),
            "products": len(g),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "db_bytes": path.stat().st_size if path.is_file() else 0,
            "free_disk_bytes": free,
            "sinks": self._bus.stats() if self._bus is not None else {},
            # Per output (MQTT, each webhook, GPIO): state, backlog, delivered, failed, ...
            "outputs": self._outputs.stats() if self._outputs is not None else {},
        }

    # --- the live loop -------------------------------------------------------------------------

    def submit(self, command: Any) -> Future[Any]:
        """Run `command` (device/commands.py) on the loop thread at its next frame. When the
        loop is not running the Future fails at once with LoopNotRunningError."""
        return self.commands.submit(command)

    def run(
        self,
        *,
        source_factory: Callable[[], Any] | None = None,
        max_frames: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        notifier: Any = None,
        retry: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Any:
        """Run the live loop on the calling thread until the source ends, `max_frames`, or
        `should_stop()`; its RunStats. Commands are taken while it runs."""
        from .camera import is_live_spec, open_source
        from .outputs.status import StatusWithOutputs
        from .service import NullNotifier, Service

        outputs = self.start_outputs()
        if outputs.stats():  # the status line shows each output's state and backlog
            notifier = StatusWithOutputs(notifier or NullNotifier(), outputs.status_text)
        cam = self.config.camera
        if source_factory is None:

            def source_factory() -> Any:
                return open_source(cam.source, width=cam.width, height=cam.height, fps=cam.fps)

        service = Service(
            self.config,
            source_factory=source_factory,
            embedder=self.embedder,
            gallery=self.gallery(),
            notifier=notifier,
            should_stop=should_stop,
            retry=is_live_spec(cam.source) if retry is None else retry,
            sleep=sleep,
            bus=self.bus,
            hub=self.hub,
            commands=self.commands,
        )
        self.service = service
        self._loop_thread = threading.get_ident()
        self.commands.open()
        try:
            return service.run(max_frames=max_frames)
        finally:
            self.commands.close()
            self._loop_thread = None


class _ViaLoop:
    """An EmbedderLike whose work runs on the loop thread (DeviceApp._on_loop)."""

    def __init__(self, app: DeviceApp, embedder: EmbedderLike) -> None:
        self._app, self._embedder = app, embedder
        self.model_id = embedder.model_id
        self.embedding_id = embedder.embedding_id
        self.dim = getattr(embedder, "dim", None)
        self.meta = getattr(embedder, "meta", None)

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        return self._app._on_loop(lambda: self._embedder.embed(crop_bgr))

    def embed_many(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return self._app._on_loop(lambda: self._embedder.embed_many(list(crops)))
