"""The live loop: frame -> background subtraction -> placement -> (once per placement) crop, embed,
match -> an `Event` published on the event bus (device/events.py), whose sinks print the JSON line,
write the events row and save the crop on their own threads: no output ever delays a frame.

Each frame is also published to the frame hub (device/framehub.py) for previews, and the commands
submitted from other threads (device/commands.py: guided enrollment, reload) are run once per
frame, here, on the loop thread: it alone owns the camera, the detector, the tracker, the
embedder and the open enrollment session.

A frame with nothing new costs only the detection on a small copy of the frame; inference runs once
per placement. A failing camera is closed and reopened with exponential back-off (capped), and the
loop carries on when frames come back. Products added by another process (enrollment) are noticed
every `reload_every_s` seconds and before each recognition, without a restart.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .adaptation import Centring
from .background import BackgroundDetector, Detection
from .camera import FrameSource
from .commands import (
    Call,
    CancelEnroll,
    CaptureView,
    CommandQueue,
    FinishEnroll,
    ReloadProducts,
    StartEnroll,
)
from .config import Config
from .crop import object_crop
from .enroll_session import CapturedViewInfo, EnrollSession
from .errors import CameraError, GalleryError, ProductNotFound
from .events import Event, EventBus, new_event_id
from .framehub import FrameHub, FrameSnapshot
from .gallery import EmbedderLike, Gallery, encode_jpeg, utc_now
from .matcher import KNOWN, Match
from .matching import MatchingPolicy
from .placement import Action, PlacementTracker, State
from .sinks import CropSink, EventLogSink, StdoutSink

logger = logging.getLogger(__name__)

# systemd start-up time asked for before each batch of re-embedding (a batch takes seconds).
REEMBED_GRACE_S = 60.0
# The events table's retention ([gallery] max_events, max_age_days) is applied at start and then
# this often, on the loop thread (its own connection; the event rows are written by the bus's
# event-log sink on another).
RETENTION_EVERY_S = 600.0


class NullNotifier:
    """Stands in for device.sdnotify.Notifier when systemd is not involved."""

    def ready(self, status: str | None = None) -> bool:
        return False

    def watchdog(self, *, force: bool = False) -> bool:
        return False

    def status(self, text: str) -> bool:
        return False

    def stopping(self, status: str | None = None) -> bool:
        return False

    def extend_timeout(self, seconds: float) -> bool:
        return False


def make_notifier() -> Any:
    try:
        from .sdnotify import Notifier
    except ImportError:  # the systemd protocol module is optional outside the service
        return NullNotifier()
    return Notifier()


def matching_policy(config: Config, embedder: EmbedderLike) -> MatchingPolicy:
    """How the matcher is built for this bundle and configuration (device/matching.py): the
    configured threshold if set, else the adaptive one (format-2 bundles), else the bundle's."""
    meta = getattr(embedder, "meta", None)
    bundle_dir = getattr(embedder, "bundle_dir", None)
    fixed = config.matcher.threshold
    margin = config.matcher.ambiguity_margin
    if bundle_dir is not None and meta is not None and hasattr(meta, "adaptation"):
        return MatchingPolicy.from_bundle(
            bundle_dir, meta, fixed_threshold=fixed, ambiguity_margin=margin
        )
    # A model without a bundle folder (a test double): its threshold, nothing adaptive.
    threshold = getattr(meta, "threshold", None)
    if fixed is None and threshold is None:
        raise ValueError(
            "the model bundle has no calibrated threshold (model.json threshold is null): "
            "run `python -m training calibrate` before converting, or give --threshold T "
            "(or [matcher] threshold in the config)"
        )
    return MatchingPolicy(
        centring=Centring.none(),
        cohort=None,
        target_far=0.01,
        bundle_threshold=threshold,
        fixed_threshold=fixed,
        ambiguity_margin=margin,
    )


class Recognizer:
    """The embedder and a matcher over the gallery's views, reloaded when the gallery changes."""

    def __init__(
        self,
        embedder: EmbedderLike,
        gallery: Gallery,
        config: Config,
        *,
        notifier: Any = None,
    ) -> None:
        self.embedder = embedder
        self.gallery = gallery
        self.config = config
        self.notifier = notifier or NullNotifier()
        self.policy = matching_policy(config, embedder)
        self.matcher, self.decision = self.policy.build(np.zeros((0, 1), np.float32), [])
        self.refresh(force=True)

    @property
    def threshold(self) -> float:
        """The threshold in force (recomputed with the products when it is adaptive)."""
        return self.decision.value

    def refresh(self, force: bool = False) -> bool:
        """Reload the views if the gallery changed (re-embedding views of an older model); True
        when a reload happened."""
        if not self.gallery.changed() and not force:
            return False
        stale = self.gallery.stale_views(self.embedder.embedding_id)
        if stale:
            self.notifier.extend_timeout(REEMBED_GRACE_S)
            self.gallery.reembed(self.embedder, progress=self._reembed_progress)
            self.gallery.changed()  # our own re-embedding is not news
        emb, labels = self.gallery.load(self.embedder.embedding_id)
        if not labels:
            emb = np.zeros((0, 1), np.float32)
        self.matcher, self.decision = self.policy.build(emb, labels)
        logger.info(
            "%d products (%d views) loaded; threshold %s",
            len(self.matcher),
            self.matcher.n_views,
            self.decision.describe(),
        )
        if stale:  # the re-embedding's progress line is over
            self.notifier.status(f"watching; {len(self.matcher)} products")
        return True

    def _reembed_progress(self, done: int, total: int) -> None:
        # After every batch, whatever a view costs on this board: more start-up time (at start),
        # a watchdog ping (when the model changed under a running service) and a status line.
        self.notifier.extend_timeout(REEMBED_GRACE_S)
        self.notifier.watchdog()
        self.notifier.status(f"re-embedding the stored views for the new model: {done}/{total}")

    def match(self, crop: np.ndarray) -> Match:
        emb = self.embedder.embed(crop)
        if len(self.matcher) == 0:
            return Match(None, "unknown", -1.0, "", None, None)
        return self.matcher.match(emb)


@dataclass
class RunStats:
    frames: int = 0
    n_events: int = 0
    # The most recent events as their JSON lines (bounded: the service runs for months; the table
    # keeps the history). Filled by the bus's dispatcher (after the crop is saved), complete when
    # `run` returns.
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    camera_errors: int = 0
    recoveries: int = 0
    reloads: int = 0
    errors: int = 0


class _Recorder:
    """The sink that keeps RunStats.events (a deque append: safe from the sink's thread)."""

    name = "run-stats"

    def __init__(self, events: deque[dict[str, Any]]) -> None:
        self.events = events

    def deliver(self, event: Event, crop_bgr: np.ndarray | None) -> None:
        self.events.append(event.to_dict())

    def close(self) -> None:
        pass


def default_bus(config: Config, gallery_path: str | Path, out: TextIO | None = None) -> EventBus:
    """The device's outputs: the JSON line on `out` (stdout), the events row, and the saved crop
    when [service] save_crops is set."""
    svc = config.service
    stages = [CropSink(svc.save_crops, svc.save_crops_keep)] if svc.save_crops else []
    return EventBus([StdoutSink(out), EventLogSink(gallery_path)], stages=stages)


class Service:
    """One run of the live loop (see `run`). Everything here belongs to the thread in `run`,
    except `bus`, `hub` and `commands`, which are made for other threads."""

    def __init__(
        self,
        config: Config,
        *,
        source_factory: Callable[[], FrameSource],
        embedder: EmbedderLike,
        gallery: Gallery,
        out: TextIO | None = None,
        notifier: Any = None,
        should_stop: Callable[[], bool] = lambda: False,
        retry: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        bus: EventBus | None = None,
        hub: FrameHub | None = None,
        commands: CommandQueue | None = None,
    ) -> None:
        self.config = config
        self.retry = retry  # False for files and folders: a failure there is final
        self.source_factory = source_factory
        self.embedder = embedder
        self.gallery = gallery
        self.notifier = notifier or NullNotifier()
        self.should_stop = should_stop
        self.sleep = sleep
        self.clock = clock
        self.detector = BackgroundDetector(config.detector, config.camera.roi)
        self.tracker = PlacementTracker(config.placement)
        self.recognizer = Recognizer(embedder, gallery, config, notifier=self.notifier)
        self.stats = RunStats()
        self._busy = 0  # consecutive frames with the scene not empty
        # A bus made here is closed at the end of `run` (so every event is delivered by then);
        # one given (DeviceApp's) lives on and is only drained.
        self._own_bus = bus is None
        self.bus = bus if bus is not None else default_bus(config, gallery.path, out)
        self._recorder = _Recorder(self.stats.events)
        self.bus.add(self._recorder)
        self.hub = hub if hub is not None else FrameHub()
        self.commands = commands
        self.camera_state = "starting"  # "ok", "failing", "ended", "stopped"
        # The frame, detection and enrollment session the commands see (loop thread only).
        self._frame: np.ndarray | None = None
        self._det: Detection | None = None
        self.session: EnrollSession | None = None
        self._next_retention = 0.0  # clock() time of the next trim of the events table

    # --- the loop ------------------------------------------------------------------------------

    def run(self, max_frames: int | None = None) -> RunStats:
        cfg = self.config.service
        backoff = cfg.retry_initial_s
        source: FrameSource | None = None
        failing = False
        next_reload = self.clock() + self.config.gallery.reload_every_s
        self._apply_retention()  # at start: a service restarted often is trimmed too
        self.notifier.ready(f"watching; {len(self.recognizer.matcher)} products")
        try:
            while not self.should_stop():
                self.notifier.watchdog()
                self._run_commands()
                if source is None:
                    try:
                        source = self.source_factory()
                    except CameraError as exc:
                        self._camera_failed(exc, failing)
                        failing = True
                        self._wait(backoff)
                        backoff = min(backoff * 2, cfg.retry_max_s)
                        continue
                t0 = time.perf_counter()
                try:
                    frame = source.read()
                except CameraError as exc:
                    self._camera_failed(exc, failing)
                    failing = True
                    source.close()
                    source = None
                    self._frame = self._det = None
                    # The view may have moved or its exposure changed: learn the scene again.
                    self.detector.reset()
                    self.tracker.reset()
                    self._wait(backoff)
                    backoff = min(backoff * 2, cfg.retry_max_s)
                    continue
                if frame is None:
                    logger.info("the video source ended after %d frames", self.stats.frames)
                    self.camera_state = "ended"
                    break
                if failing:
                    failing = False
                    self.stats.recoveries += 1
                    logger.warning("the camera is back; recognising again")
                    self.notifier.status(
                        f"watching; {len(self.recognizer.matcher)} products; threshold "
                        f"{self.recognizer.threshold:.3f} ({self.recognizer.decision.source})"
                    )
                self.camera_state = "ok"
                backoff = cfg.retry_initial_s
                self.stats.frames += 1
                try:
                    self._process(frame, t0)
                    if self.clock() >= next_reload:
                        next_reload = self.clock() + self.config.gallery.reload_every_s
                        if self.recognizer.refresh():
                            self.stats.reloads += 1
                    self.stats.errors = 0
                except Exception:  # the service loop is where broad failures are caught
                    self.stats.errors += 1
                    logger.exception("error while processing frame %d", self.stats.frames)
                    if self.stats.errors >= 50:
                        raise
                if max_frames is not None and self.stats.frames >= max_frames:
                    break
        finally:
            if self.camera_state != "ended":
                self.camera_state = "stopped"
            try:
                if self.commands is not None:
                    self._run_commands()  # what was submitted before the stop still runs
                if self._own_bus:
                    self.bus.close()  # delivers what is queued: every row is written by now
                else:
                    self.bus.drain(self.bus.close_timeout_s)
                    self.bus.remove(self._recorder)
            finally:
                if source is not None:
                    source.close()
            self.notifier.stopping(f"stopped after {self.stats.frames} frames")
        return self.stats

    def _camera_failed(self, exc: CameraError, already: bool) -> None:
        self.stats.camera_errors += 1
        self.camera_state = "failing"
        if not self.retry:
            raise exc
        if already:
            logger.debug("camera still failing: %s", exc)
        else:
            logger.error("camera failure: %s; retrying with back-off", exc)
            self.notifier.status(f"camera failing: {exc}")

    def _wait(self, seconds: float) -> None:
        """Sleep in short slices so a stop request, the watchdog and commands are served."""
        end = self.clock() + seconds
        while not self.should_stop():
            left = end - self.clock()
            if left <= 0:
                return
            self.notifier.watchdog()
            self._run_commands()
            self.sleep(min(left, 0.5))

    def _apply_retention(self) -> None:
        """Trim the events table to [gallery] max_events / max_age_days, now and every
        RETENTION_EVERY_S; a database that refuses it is logged and tried again later."""
        g = self.config.gallery
        self._next_retention = self.clock() + RETENTION_EVERY_S
        if not (g.max_events or g.max_age_days):
            return
        try:
            deleted = self.gallery.trim_events(g.max_events, g.max_age_days)
        except GalleryError as exc:
            logger.warning("could not trim the events table: %s (tried again later)", exc)
            return
        if deleted:
            logger.info("events table trimmed: %d old rows deleted", deleted)

    def _process(self, frame: np.ndarray, t0: float) -> None:
        if self.clock() >= self._next_retention:
            self._apply_retention()
        det = self.detector.detect(frame)
        action = self.tracker.update(det)
        self._frame, self._det = frame, det
        if det is None and self.tracker.is_empty:
            self.detector.adapt()
            self._busy = 0
        elif self.detector.ready:
            self._busy += 1
            limit = self.config.placement.relearn_after_frames
            if limit and self._busy >= limit:
                logger.warning(
                    "the scene has not been empty for %d frames: taking the current view as the "
                    "empty background",
                    self._busy,
                )
                self.detector.reset()
                self.tracker.reset()
                self._busy = 0
        if action is Action.RECOGNISE and det is not None:
            if self.session is None:
                self._recognise(frame, det, t0)
            else:  # an enrollment is going on: a placement is a view to capture, not an event
                logger.debug("steady object while enrolling %r: not recognised", self.session.name)
        self.hub.publish(
            FrameSnapshot(
                number=self.stats.frames,
                time=self.clock(),
                image=frame,
                roi=self._roi_px(frame),
                box=None if det is None else det.box,
                state=self._state(),
            )
        )

    def _roi_px(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        x0, y0, x1, y1 = self.config.camera.roi
        if (x0, y0, x1, y1) == (0.0, 0.0, 1.0, 1.0):
            return None
        h, w = frame.shape[:2]
        return (int(x0 * w), int(y0 * h), int((x1 - x0) * w), int((y1 - y0) * h))

    def _state(self) -> str:
        if not self.detector.ready:
            return "learning"
        if self.tracker.state is State.EMPTY:
            return "empty"
        if self.tracker.state is State.CHANGED:
            return "placed"
        return "stable" if self.session is not None else "recognised"

    def _recognise(self, frame: np.ndarray, det: Detection, t0: float) -> None:
        when = utc_now()  # the frame's time; taken before the inference evicts the caches
        if self.recognizer.refresh():
            self.stats.reloads += 1
        crop, crop_box = object_crop(frame, det.box, self.config.detector.pad)
        m = self.recognizer.match(crop)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        event = Event(
            id=new_event_id(),
            time=when,
            label=m.label if m.status == KNOWN and m.label is not None else "unknown",
            status=m.status,
            score=round(m.score, 4),
            best=m.best_label or None,
            runner_up=m.runner_up,
            runner_up_score=None if m.runner_up_score is None else round(m.runner_up_score, 4),
            box=det.box,
            crop_box=crop_box,
            latency_ms=round(latency_ms, 2),
            frame=self.stats.frames,
            model_id=self.embedder.model_id,
        )
        self.bus.publish(event, crop)
        self.stats.n_events += 1
        self.notifier.status(f"last: {event.label} ({m.score:.2f})")
        # stdout (the journal under systemd) carries the event: no second line at INFO.
        logger.debug("%s (%s, %.3f) in %.1f ms", event.label, m.status, m.score, latency_ms)

    # --- commands (device/commands.py), run here on the loop thread ----------------------------

    def _run_commands(self) -> None:
        if self.commands is not None:
            self.commands.drain(self._handle)

    def _handle(self, command: Any) -> Any:
        if isinstance(command, Call):
            return command.fn()
        if isinstance(command, ReloadProducts):
            self.recognizer.refresh(force=True)
            self.stats.reloads += 1
            return len(self.recognizer.matcher)
        if isinstance(command, StartEnroll):
            if self.session is not None:
                raise ValueError(
                    f"an enrollment of {self.session.name!r} is in progress: finish or cancel it "
                    "first"
                )
            session = EnrollSession(
                command.name,
                command.views,
                self.config.enroll.duplicate_cosine,
                code=command.code,
                append=command.append,
            )
            session.check_name(self.gallery)
            self.session = session
            logger.info("enrolling %r (%d views)", session.name, session.views_wanted)
            return session.id
        if isinstance(command, (CaptureView, FinishEnroll, CancelEnroll)):
            session = self._session(command.session_id)
            if isinstance(command, CancelEnroll):
                self.session = None
                logger.info("enrollment of %r cancelled: nothing stored", session.name)
                return None
            if isinstance(command, CaptureView):
                return self._capture(session)
            if not session.done:
                raise ValueError(
                    f"{len(session.views)} of {session.views_wanted} views of {session.name!r} "
                    "taken: capture the others first (or cancel)"
                )
            pid = session.commit(
                self.gallery, self.embedder.embedding_id, crop_size=self.config.gallery.crop_size
            )
            self.session = None
            self.recognizer.refresh(force=True)  # recognised from the next placement on
            product = self.gallery.product_by_id(pid)
            logger.info("stored %r with %d views", session.name, len(session.views))
            return product
        raise TypeError(f"not a command: {command!r}")

    def _session(self, session_id: str) -> EnrollSession:
        if self.session is None or self.session.id != session_id:
            raise ProductNotFound(f"no enrollment session {session_id!r} (finished or cancelled?)")
        return self.session

    def _capture(self, session: EnrollSession) -> CapturedViewInfo:
        frame, det = self._frame, self._det
        if frame is None or det is None or self.tracker.state is not State.REPORTED:
            raise ValueError(
                "no steady object in view: place the product inside the camera's view and keep "
                "it still until the preview says it is stable"
            )
        crop, crop_box = object_crop(frame, det.box, self.config.detector.pad)
        emb = np.asarray(self.embedder.embed(crop), dtype=np.float32)
        index = session.offer(crop, det.box, crop_box, emb)
        return CapturedViewInfo(
            session.id,
            index,
            session.views_wanted,
            det.box,
            encode_jpeg(crop, self.config.gallery.crop_size),
        )
