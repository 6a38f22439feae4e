"""Frame sources: one small interface over picamera2, OpenCV `VideoCapture` and image folders.

Every source returns BGR uint8 frames from `read()`; `None` means a finite source (a video file or
a folder) has ended; a live camera that stops delivering raises `CameraError` instead, so the
service can retry it. Camera libraries are imported inside their source only: `import
device.camera` works on any machine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from .closing import Closing
from .errors import CameraError
from .images import list_images, load_image

logger = logging.getLogger(__name__)


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


class OpenCVSource(_SourceBase):
    """cv2.VideoCapture: a USB camera index, a video file, or an RTSP/HTTP URL."""

    def __init__(
        self,
        spec: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        import cv2

        self.spec = spec
        self.finite = isinstance(spec, str) and Path(spec).is_file()
        if isinstance(spec, str) and not self.finite and "://" not in spec:
            raise ValueError(
                f"video source {spec!r} is neither an existing file or folder, a URL nor a camera "
                "index; check [camera] source / --source"
            )
        self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraError(
                f"cannot open video source {spec!r}: check the camera is plugged in (ls /dev/video*) "
                "and not used by another program, or that the file/URL is right"
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
            raise CameraError(f"video source {self.spec!r} delivered no frame (unplugged?)")
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


class Picamera2Source(_SourceBase):
    """A Raspberry Pi camera through picamera2 (libcamera)."""

    def __init__(self, *, width: int = 640, height: int = 480, fps: float = 15.0) -> None:
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed: on Raspberry Pi OS `sudo apt install python3-picamera2` "
                "and create the venv with --system-site-packages; elsewhere use a USB camera index "
                '(source = "0"), a video file or a folder'
            ) from exc
        try:
            self._cam = Picamera2()
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
            frame = self._cam.capture_array("main")
        except Exception as exc:
            raise CameraError(f"the Raspberry Pi camera failed: {exc}") from exc
        return np.ascontiguousarray(_as_bgr(frame))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:  # closing a failed camera must not mask the original error
                logger.debug("error while closing picamera2", exc_info=True)


def is_live_spec(spec: str) -> bool:
    """True for cameras and network streams (worth retrying when they fail), False for files,
    folders and synthetic scenes (a failure there is final)."""
    spec = spec.strip()
    return not (spec.startswith("synthetic:") or Path(spec).exists())


def open_source(
    spec: str, *, width: int = 640, height: int = 480, fps: float = 15.0, realtime: bool = False
) -> FrameSource:
    """A frame source from a config/command-line string.

    "picamera2" | "picam"          -> Picamera2Source
    "0", "1", ...                  -> OpenCVSource(camera index)
    an existing directory          -> FolderSource (paced to fps when `realtime`)
    "synthetic:PHOTOS_DIR[:SEED]"  -> a generated scene (device.synthetic)
    anything else                  -> OpenCVSource (video file or URL)
    """
    spec = spec.strip()
    if spec.lower() in ("picamera2", "picam", "picamera"):
        return Picamera2Source(width=width, height=height, fps=fps)
    if spec.isdigit():
        return OpenCVSource(int(spec), width=width, height=height, fps=fps)
    if spec.startswith("synthetic:"):
        from .synthetic import synthetic_source_from_spec

        return synthetic_source_from_spec(spec, width=width, height=height)
    if Path(spec).is_dir():
        return FolderSource(spec, fps=fps if realtime else None)
    return OpenCVSource(spec, width=width, height=height, fps=fps)
