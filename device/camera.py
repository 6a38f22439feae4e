"""Frame sources: one small interface over picamera2, OpenCV `VideoCapture` and image folders.

Every source returns BGR uint8 frames from `read()`; `None` means a finite source (a video file or
a folder) has ended; a live camera that stops delivering raises `CameraError` instead, so the
service can retry it. Camera libraries are imported inside their source only: `import
device.camera` works on any machine.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .closing import Closing
from .errors import CameraError
from .images import list_images, load_image

logger = logging.getLogger(__name__)

# How long OpenCV's FFmpeg backend may wait to open a network stream or for its next frame. Its
# default is 30 s, and while OpenCV blocks no Python signal handler runs: a stalled camera would
# delay SIGTERM past systemd's TimeoutStopSec (20 s) and starve its 30 s watchdog. A read that
# times out fails like an unplugged camera, and the service retries it with back-off.
STREAM_TIMEOUT_S = 5.0

PICAMERA2_SPECS = ("picamera2", "picam", "picamera")
PICAMERA_TIMEOUT_S = 2.0  # a frame comes every 1/fps s; this long without one is a fault


class CameraLibraryMissingError(CameraError):
    """The library a camera source needs is not installed: retrying cannot help."""


@runtime_checkable
class FrameSource(Protocol):
    """What the service and enrollment need from a camera."""

    #: True for video files and folders: `read()` returns None at the end instead of failing.
    finite: bool

    def read(self) -> np.ndarray | None:
        """The next frame (HxWx3 BGR uint8); None at the end of a finite source.

        Raises CameraError when a live source fails."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _SourceBase(Closing):
    finite = False


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def is_url(spec: str) -> bool:
    """True for a network stream such as rtsp://host/stream or http://host/video.mjpg."""
    return "://" in spec


# Linux's major device number of video4linux nodes (/dev/video*): other character devices, such
# as /dev/null or a serial port, are not cameras.
V4L_MAJOR = 81


def _char_device_major(spec: str) -> int | None:
    try:
        st = os.stat(spec)
    except (OSError, ValueError):  # missing, unreadable, or not a valid path at all
        return None
    return os.major(st.st_rdev) if stat.S_ISCHR(st.st_mode) else None


def is_video_device(spec: str) -> bool:
    """True for an existing video4linux device such as /dev/video0 (or a /dev/v4l/by-id/...
    symlink to one): a live V4L2 camera, unlike a video file."""
    return _char_device_major(spec) == V4L_MAJOR


def _names_video_device(spec: str) -> bool:
    """A path that names a V4L2 camera even while it is missing (unplugged)."""
    return spec.startswith(("/dev/video", "/dev/v4l/"))


def _has_backend(cv2: Any, name: str) -> bool:
    """True when this OpenCV build has the VideoCapture backend `name` (e.g. "CAP_FFMPEG")."""
    if not hasattr(cv2, name):
        return False
    registry = getattr(cv2, "videoio_registry", None)
    return registry is None or bool(registry.hasBackend(getattr(cv2, name)))


def _stream_params(cv2: Any, timeout_s: float) -> list[int] | None:
    """VideoCapture params bounding FFmpeg's open and read waits; None when unsupported."""
    names = ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC")
    if not all(hasattr(cv2, n) for n in names):  # OpenCV < 4.5.2
        return None
    if not _has_backend(cv2, "CAP_FFMPEG"):
        return None  # e.g. a GStreamer-only build: the timeouts are FFmpeg's
    ms = int(timeout_s * 1000)
    return [getattr(cv2, names[0]), ms, getattr(cv2, names[1]), ms]


class OpenCVSource(_SourceBase):
    """cv2.VideoCapture: a USB camera index or device (/dev/video0), a video file, or an
    RTSP/HTTP URL."""

    def __init__(
        self,
        spec: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        timeout_s: float = STREAM_TIMEOUT_S,
    ) -> None:
        import cv2

        self.spec = spec
        self.finite = isinstance(spec, str) and Path(spec).is_file()
        device = isinstance(spec, str) and is_video_device(spec)
        if isinstance(spec, str) and not (self.finite or device or is_url(spec)):
            if _char_device_major(spec) is not None:
                raise ValueError(
                    f"{spec} is a device but not a camera (video4linux): give /dev/video<N> or a "
                    "/dev/v4l/by-id/... name (ls /dev/video* /dev/v4l/by-id/); check --source"
                )
            if _names_video_device(spec):
                # An unplugged camera: a CameraError, so the service retries it like an index.
                raise CameraError(
                    f"video device {spec} does not exist: check the camera is plugged in "
                    "(ls /dev/video* /dev/v4l/by-id/)"
                )
            raise ValueError(
                f"video source {spec!r} is neither an existing file or folder, a video device, a "
                "URL nor a camera index; check [camera] source / --source"
            )
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        params = _stream_params(cv2, timeout_s) if isinstance(spec, str) and is_url(spec) else None
        if params is not None:
            self._cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
        elif device and _has_backend(cv2, "CAP_V4L2"):
            # By name, OpenCV would try FFmpeg and GStreamer on the device node first.
            self._cap = cv2.VideoCapture(spec, cv2.CAP_V4L2)
        else:
            if isinstance(spec, str) and is_url(spec):
                logger.warning(
                    "OpenCV %s cannot bound the wait for a network stream: a stalled stream can "
                    "block for about 30 s (install OpenCV 4.5.2+ with FFmpeg)",
                    cv2.__version__,
                )
            self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraError(
                f"cannot open video source {spec!r}: check the camera is plugged in (ls /dev/video*), "
                "not used by another program and readable by this user (the video group), or that "
                "the file/URL is right (a network camera under the systemd service needs its "
                "address allowed: IPAddressAllow=, see systemd/prodrec.service)"
            )
        if not self.finite:  # a file has its own size and rate
            if width and height:
                self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                self._cap.set(cv2.CAP_PROP_FPS, fps)
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            raise CameraError(f"video source {self.spec!r} is closed")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if self.finite:
                return None
            raise CameraError(
                f"video source {self.spec!r} delivered no frame (unplugged, or the stream stalled?)"
            )
        return _as_bgr(frame)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cap.release()


class FolderSource(_SourceBase):
    """The images of a folder, in name order, replayed as frames (optionally paced to `fps`)."""

    finite = True

    def __init__(self, folder: str | Path, *, fps: float | None = None, loop: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CameraError(f"frame folder {self.folder} does not exist")
        self.paths = list_images(self.folder)
        if not self.paths:
            raise CameraError(f"frame folder {self.folder} holds no images")
        self.loop = loop
        self.finite = not loop
        self._period = 1.0 / fps if fps else 0.0
        self._next_time = 0.0
        self.index = 0

    def read(self) -> np.ndarray | None:
        if self.index >= len(self.paths):
            if not self.loop:
                return None
            self.index = 0
        if self._period:
            now = time.monotonic()
            if now < self._next_time:
                time.sleep(self._next_time - now)
            self._next_time = max(now, self._next_time) + self._period
        path = self.paths[self.index]
        self.index += 1
        try:
            return load_image(path)
        except ValueError as exc:
            raise CameraError(f"frame {path} is unreadable: {exc}") from exc


def _import_picamera2() -> Any:
    """picamera2's Picamera2 class; CameraLibraryMissingError (not worth retrying) when it cannot be
    imported."""
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CameraLibraryMissingError(
            f"picamera2 cannot be imported ({exc}): on Raspberry Pi OS `sudo apt install "
            "python3-picamera2` and create the venv with --system-site-packages (or run "
            'systemd/install.sh); elsewhere use a USB camera index (source = "0"), a video file '
            "or a folder"
        ) from exc
    return Picamera2


def check_source_library(spec: str) -> None:
    """Raise CameraLibraryMissingError at once when the library `spec` needs is not installed.

    A missing library is not a transient camera fault: the service must stop with the install
    hint instead of retrying it forever (a camera that is present but fails is retried)."""
    source_kind(spec).check_library()


class Picamera2Source(_SourceBase):
    """A Raspberry Pi camera through picamera2 (libcamera)."""

    def __init__(self, *, width: int = 640, height: int = 480, fps: float = 15.0) -> None:
        picamera2_cls = _import_picamera2()
        try:
            self._cam = picamera2_cls()
            # "RGB888" in libcamera's naming is B,G,R byte order in memory: OpenCV's BGR.
            cfg = self._cam.create_video_configuration(
                main={"size": (width, height), "format": "RGB888"},
                controls={"FrameDurationLimits": (int(1e6 / fps), int(1e6 / fps))},
            )
            self._cam.configure(cfg)
            self._cam.start()
        except Exception as exc:  # libcamera raises many types; all mean "no camera"
            raise CameraError(
                f"cannot start the Raspberry Pi camera ({exc}): check the ribbon cable and "
                "`rpicam-hello --list-cameras`"
            ) from exc
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed:
            raise CameraError("the Raspberry Pi camera is closed")
        try:
            frame = self._capture()
        except TimeoutError as exc:
            # The capture job stays queued: flush it, or stop() (queued behind it) would wait
            # for it forever when the source is closed for the retry.
            flush = getattr(self._cam, "cancel_all_and_flush", None)
            if callable(flush):
                try:
                    flush()
                except Exception:  # the CameraError below is what matters
                    logger.debug("cancel_all_and_flush failed", exc_info=True)
            raise CameraError(
                f"no frame from the Raspberry Pi camera in {PICAMERA_TIMEOUT_S:.0f} s: check its "
                "ribbon cable and power"
            ) from exc
        except Exception as exc:
            raise CameraError(f"the Raspberry Pi camera failed: {exc}") from exc
        return np.ascontiguousarray(_as_bgr(frame))

    def _capture(self) -> np.ndarray:
        # picamera2's blocking capture never times out: a stalled sensor would hang the service
        # until the watchdog kills it. Ask for the frame as a job and wait for it with a timeout
        # (TimeoutError), where this picamera2 can.
        cam = self._cam
        if not hasattr(cam, "wait"):
            return cam.capture_array("main")
        job = cam.capture_array("main", wait=False)
        try:
            return cam.wait(job, timeout=PICAMERA_TIMEOUT_S)
        except TypeError:  # an older picamera2 without the timeout
            return cam.wait(job)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # closing a failed camera must not mask the original error
                logger.debug("error while closing picamera2", exc_info=True)


def is_live_spec(spec: str) -> bool:
    """True for cameras (also video devices such as /dev/video0, present or unplugged) and network
    streams, worth retrying when they fail; False for files, folders and synthetic scenes (a
    failure there is final)."""
    spec = spec.strip()
    if is_video_device(spec) or _names_video_device(spec):
        return True
    return not (spec.startswith("synthetic:") or Path(spec).exists())


@dataclass(frozen=True)
class SourceKind:
    """One kind of frame source in the registry: which specs it takes, how to open one."""

    name: str
    matches: Callable[[str], bool]
    open: Callable[..., FrameSource]  # (spec, width=, height=, fps=, realtime=) -> source
    check_library: Callable[[], Any] = lambda: None


def _open_picamera2(spec: str, *, width: int, height: int, fps: float, realtime: bool) -> Any:
    return Picamera2Source(width=width, height=height, fps=fps)


def _open_index(spec: str, *, width: int, height: int, fps: float, realtime: bool) -> Any:
    return OpenCVSource(int(spec), width=width, height=height, fps=fps)


def _open_synthetic(spec: str, *, width: int, height: int, fps: float, realtime: bool) -> Any:
    from .synthetic import synthetic_source_from_spec

    return synthetic_source_from_spec(spec, width=width, height=height)


def _open_folder(spec: str, *, width: int, height: int, fps: float, realtime: bool) -> Any:
    return FolderSource(spec, fps=fps if realtime else None)


def _open_opencv(spec: str, *, width: int, height: int, fps: float, realtime: bool) -> Any:
    return OpenCVSource(spec, width=width, height=height, fps=fps)


# Tried in order; the last takes anything. Adding a kind of source is one entry here.
SOURCE_KINDS: list[SourceKind] = [
    SourceKind(
        "picamera2",
        lambda spec: spec.lower() in PICAMERA2_SPECS,
        _open_picamera2,
        _import_picamera2,
    ),
    SourceKind("camera index", str.isdigit, _open_index),
    SourceKind("synthetic scene", lambda spec: spec.startswith("synthetic:"), _open_synthetic),
    SourceKind("folder of images", lambda spec: Path(spec).is_dir(), _open_folder),
    SourceKind("video file, device or URL (OpenCV)", lambda spec: True, _open_opencv),
]


def source_kind(spec: str) -> SourceKind:
    spec = spec.strip()
    return next(kind for kind in SOURCE_KINDS if kind.matches(spec))


def open_source(
    spec: str, *, width: int = 640, height: int = 480, fps: float = 15.0, realtime: bool = False
) -> FrameSource:
    """A frame source from a config/command-line string.

    "picamera2" | "picam"          -> Picamera2Source
    "0", "1", ...                  -> OpenCVSource(camera index)
    "/dev/video0", /dev/v4l/...    -> OpenCVSource(V4L2 camera device)
    an existing directory          -> FolderSource (paced to fps when `realtime`)
    "synthetic:PHOTOS_DIR[:SEED]"  -> a generated scene (device.synthetic)
    anything else                  -> OpenCVSource (video file or URL)
    """
    spec = spec.strip()
    kind = source_kind(spec)
    return kind.open(spec, width=width, height=height, fps=fps, realtime=realtime)
