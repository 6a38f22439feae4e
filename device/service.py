"""The live loop: frame -> background subtraction -> placement -> (once per placement) crop, embed,
match -> one JSON line on stdout and a row in the events table.

A frame with nothing new costs only the detection on a small copy of the frame; inference runs once
per placement. The JSON line leaves on the frame of the recognition; its row in the events table is
written on the next frame (or at stop), so a database commit (and the occasional WAL checkpoint)
never delays a report. A failing camera is closed and reopened with exponential back-off
(capped), and the loop carries on when frames come back. Products added by another process (enrollment) are noticed
every `reload_every_s` seconds and before each recognition, without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
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
from .config import Config
from .crop import object_crop
from .errors import CameraError, GalleryError
from .gallery import EmbedderLike, Gallery, utc_now
from .matcher import KNOWN, Match
from .matching import MatchingPolicy
from .placement import Action, PlacementTracker

logger = logging.getLogger(__name__)

# systemd start-up time asked for before each batch of re-embedding (a batch takes seconds).
REEMBED_GRACE_S = 60.0
# Event rows kept in memory while the database refuses them.
MAX_PENDING_EVENTS = 1000
# The app's own saved crops: <UTC time>_<frame>_<label>.jpg (pruning never touches other files).
_CROP_NAME = re.compile(r"^\d{8}T\d{6}(\.\d+)?Z?_\d{7}_.*\.jpg$")


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
        stale = self.gallery.stale_views(self.embedder.model_id)
        if stale:
            self.notifier.extend_timeout(REEMBED_GRACE_S)
            self.gallery.reembed(self.embedder, progress=self._reembed_progress)
            self.gallery.changed()  # our own re-embedding is not news
        emb, labels = self.gallery.load(self.embedder.model_id)
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
    # The most recent events (bounded: the service runs for months; the table keeps the history).
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    camera_errors: int = 0
    recoveries: int = 0
    reloads: int = 0
    errors: int = 0


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "unknown"


class Service:
    """One run of the live loop (see `run`)."""

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
    ) -> None:
        self.config = config
        self.retry = retry  # False for files and folders: a failure there is final
        self.source_factory = source_factory
        self.embedder = embedder
        self.gallery = gallery
        self.out = out if out is not None else sys.stdout
        self.notifier = notifier or NullNotifier()
        self.should_stop = should_stop
        self.sleep = sleep
        self.clock = clock
        self.detector = BackgroundDetector(config.detector, config.camera.roi)
        self.tracker = PlacementTracker(config.placement)
        self.recognizer = Recognizer(embedder, gallery, config, notifier=self.notifier)
        self.stats = RunStats()
        self._busy = 0  # consecutive frames with the scene not empty
        self._unlogged: list[dict[str, Any]] = []  # events reported but not yet in the database
        self._events_failing = False  # the database refused the last event rows
        self.save_dir = Path(config.service.save_crops) if config.service.save_crops else None
        # The saved crops, oldest first: listed once here, then kept up to date as crops are
        # saved, so pruning costs no folder listing on the frame of a recognition.
        self._saved_crops: deque[Path] = deque()
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._saved_crops.extend(
                sorted(p for p in self.save_dir.glob("*.jpg") if _CROP_NAME.match(p.name))
            )

    # --- the loop ------------------------------------------------------------------------------

    def run(self, max_frames: int | None = None) -> RunStats:
        cfg = self.config.service
        backoff = cfg.retry_initial_s
        source: FrameSource | None = None
        failing = False
        next_reload = self.clock() + self.config.gallery.reload_every_s
        self.notifier.ready(f"watching; {len(self.recognizer.matcher)} products")
        try:
            while not self.should_stop():
                self.notifier.watchdog()
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
                    # The view may have moved or its exposure changed: learn the scene again.
                    self.detector.reset()
                    self.tracker.reset()
                    self._wait(backoff)
                    backoff = min(backoff * 2, cfg.retry_max_s)
                    continue
                if frame is None:
                    logger.info("the video source ended after %d frames", self.stats.frames)
                    break
                if failing:
                    failing = False
                    self.stats.recoveries += 1
                    logger.warning("the camera is back; recognising again")
                    self.notifier.status(
                        f"watching; {len(self.recognizer.matcher)} products; threshold "
                        f"{self.recognizer.threshold:.3f} ({self.recognizer.decision.source})"
                    )
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
            try:
                self._flush_events_or_warn()
                if self._unlogged:  # stopping while the database still refuses them
                    logger.error(
                        "%d event row(s) not written to the database (they are in the printed "
                        "JSON lines)",
                        len(self._unlogged),
                    )
            finally:
                if source is not None:
                    source.close()
            self.notifier.stopping(f"stopped after {self.stats.frames} frames")
        return self.stats

    def _camera_failed(self, exc: CameraError, already: bool) -> None:
        self.stats.camera_errors += 1
        if not self.retry:
            raise exc
        if already:
            logger.debug("camera still failing: %s", exc)
        else:
            logger.error("camera failure: %s; retrying with back-off", exc)
            self.notifier.status(f"camera failing: {exc}")

    def _wait(self, seconds: float) -> None:
        """Sleep in short slices so a stop request and the watchdog are served meanwhile."""
        end = self.clock() + seconds
        while not self.should_stop():
            left = end - self.clock()
            if left <= 0:
                return
            self.notifier.watchdog()
            self.sleep(min(left, 0.5))

    def flush_events(self) -> None:
        """Write the reported events not yet in the events table."""
        while self._unlogged:
            self.gallery.log_event(self._unlogged[0])
            self._unlogged.pop(0)

    def _prune_crops(self) -> None:
        """Delete the oldest saved crops beyond [service] save_crops_keep (names start with the
        event's UTC time, so name order is age order)."""
        keep = self.config.service.save_crops_keep
        while keep and len(self._saved_crops) > keep:
            old = self._saved_crops.popleft()
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:  # a crop folder problem must not stop recognition
                logger.warning("could not delete the saved crop %s: %s", old, exc)

    def _flush_events_or_warn(self) -> None:
        """Write pending event rows; a database that cannot take them (disk full, file made
        read-only) must not stop recognition: the events are on stdout (the journal) anyway, and
        the rows are written once it works again (the most recent MAX_PENDING_EVENTS kept)."""
        try:
            self.flush_events()
        except GalleryError as exc:
            if not self._events_failing:
                logger.error(
                    "cannot write events to the product database: %s. Recognition goes on; the "
                    "events are still printed and are written when the database works again",
                    exc,
                )
                self._events_failing = True
            dropped = len(self._unlogged) - MAX_PENDING_EVENTS
            if dropped > 0:
                logger.error(
                    "%d event row(s) dropped (only the last %d are kept while the database "
                    "refuses them; every event is in the printed JSON lines)",
                    dropped,
                    MAX_PENDING_EVENTS,
                )
                del self._unlogged[:dropped]
        else:
            if self._events_failing:
                logger.warning("events are written to the product database again")
                self._events_failing = False

    def _process(self, frame: np.ndarray, t0: float) -> None:
        if self._unlogged:
            self._flush_events_or_warn()
        det = self.detector.detect(frame)
        action = self.tracker.update(det)
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
            self._recognise(frame, det, t0)

    def _recognise(self, frame: np.ndarray, det: Detection, t0: float) -> None:
        when = utc_now()  # the frame's time; taken before the inference evicts the caches
        if self.recognizer.refresh():
            self.stats.reloads += 1
        crop, crop_box = object_crop(frame, det.box, self.config.detector.pad)
        m = self.recognizer.match(crop)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        event: dict[str, Any] = {
            "time": when,
            "label": m.label if m.status == KNOWN else "unknown",
            "status": m.status,
            "score": round(m.score, 4),
            "best": m.best_label or None,
            "runner_up": m.runner_up,
            "runner_up_score": None if m.runner_up_score is None else round(m.runner_up_score, 4),
            "box": list(det.box),
            "crop_box": list(crop_box),
            "latency_ms": round(latency_ms, 2),
            "frame": self.stats.frames,
            "model_id": self.embedder.model_id,
        }
        if self.save_dir is not None:
            import cv2

            stamp = event["time"].replace(":", "").replace("-", "")
            name = f"{stamp}_{self.stats.frames:07d}_{_safe_name(event['label'])}.jpg"
            path = self.save_dir / name
            if cv2.imwrite(str(path), crop):
                event["crop_file"] = str(path)
                self._saved_crops.append(path)
                self._prune_crops()
            else:
                logger.warning("could not save the crop to %s", path)
        try:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()
        except BrokenPipeError:  # e.g. `... | head`: keep recognising, into the database only
            logger.warning("stdout is closed: events now go to the events table only")
            self.out = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the service
        self.stats.events.append(event)
        self.stats.n_events += 1
        self._unlogged.append(event)  # written on the next frame: see the module's docstring
        self.notifier.status(f"last: {event['label']} ({m.score:.2f})")
        # stdout (the journal under systemd) already carries the event: no second line at INFO.
        logger.debug("%s (%s, %.3f) in %.1f ms", event["label"], m.status, m.score, latency_ms)
