"""Frame sources: dispatch, clear errors, and (on a Pi / with a camera) real capture."""

from __future__ import annotations

import importlib.util
import os
import socket
import stat
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

import device.camera as camera_module
from device.camera import (
    STREAM_TIMEOUT_S,
    CameraLibraryMissingError,
    FolderSource,
    OpenCVSource,
    Picamera2Source,
    check_source_library,
    is_live_spec,
    is_video_device,
    open_source,
)
from device.errors import CameraError
from device.synthetic import SyntheticSource

from .conftest import FIXTURE

HAVE_PICAMERA2 = importlib.util.find_spec("picamera2") is not None


def test_folder_source_replays_and_ends(tmp_path: Path) -> None:
    with FolderSource(FIXTURE / "train" / "Banana") as src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 8 and all(f.dtype == np.uint8 and f.shape[2] == 3 for f in frames)
    with pytest.raises(CameraError, match="no images"):
        FolderSource(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"broken")
    with FolderSource(tmp_path) as src, pytest.raises(CameraError, match="unreadable"):
        src.read()


def test_open_source_dispatch_and_errors(tmp_path: Path) -> None:
    assert isinstance(open_source(str(FIXTURE / "test" / "Banana")), FolderSource)
    assert isinstance(open_source(f"synthetic:{FIXTURE / 'test'}"), SyntheticSource)
    with pytest.raises(ValueError, match="neither"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVSource(str(FIXTURE / "README.md"))  # a file that is not a video
    assert is_live_spec("0") and is_live_spec("rtsp://cam/stream") and is_live_spec("picamera2")
    assert not is_live_spec(str(FIXTURE)) and not is_live_spec("synthetic:x")


@pytest.mark.skipif(HAVE_PICAMERA2, reason="picamera2 is installed here")
def test_picamera2_missing_says_what_to_install() -> None:
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        Picamera2Source()


@pytest.mark.pi
@pytest.mark.skipif(not HAVE_PICAMERA2, reason="needs a Raspberry Pi with picamera2")
def test_picamera2_delivers_bgr_frames() -> None:
    with Picamera2Source(width=640, height=480, fps=15) as cam:
        frame = cam.read()
    assert frame is not None and frame.shape == (480, 640, 3) and frame.dtype == np.uint8


@pytest.mark.camera
@pytest.mark.skipif(
    "PRODREC_CAMERA" not in os.environ, reason="set PRODREC_CAMERA=<index> with a USB camera"
)
def test_usb_camera_delivers_frames() -> None:
    with open_source(os.environ["PRODREC_CAMERA"], width=640, height=480) as cam:
        frame = cam.read()
    assert frame is not None and frame.ndim == 3


# --- network streams: bounded waits --------------------------------------------------------------


class RecordingCapture:
    """Stands in for cv2.VideoCapture: records how it was opened, delivers `frames` frames per
    open and then fails like an unplugged camera."""

    opened: ClassVar[list[tuple[Any, ...]]] = []
    frames = 3

    def __init__(self, *args: Any) -> None:
        RecordingCapture.opened.append(args)
        self.left = RecordingCapture.frames

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.full((480, 640, 3), 90, np.uint8)

    def release(self) -> None:
        pass


@pytest.fixture
def recording_capture(monkeypatch: pytest.MonkeyPatch) -> type[RecordingCapture]:
    monkeypatch.setattr(RecordingCapture, "opened", [])
    monkeypatch.setattr(RecordingCapture, "frames", 3)
    monkeypatch.setattr(cv2, "VideoCapture", RecordingCapture)
    return RecordingCapture


def test_url_sources_get_open_and_read_timeouts(recording_capture: type[RecordingCapture]) -> None:
    OpenCVSource("rtsp://cam.local/stream", timeout_s=3.0).close()
    OpenCVSource("http://cam.local/video.mjpg").close()
    OpenCVSource(0).close()  # a camera index: no stream timeouts
    ms = int(STREAM_TIMEOUT_S * 1000)
    open_ms, read_ms = cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, cv2.CAP_PROP_READ_TIMEOUT_MSEC
    assert recording_capture.opened == [
        ("rtsp://cam.local/stream", cv2.CAP_FFMPEG, [open_ms, 3000, read_ms, 3000]),
        ("http://cam.local/video.mjpg", cv2.CAP_FFMPEG, [open_ms, ms, read_ms, ms]),
        (0,),
    ]
    # Well below systemd's TimeoutStopSec (20 s) and WatchdogSec (30 s).
    assert 1 <= STREAM_TIMEOUT_S <= 10


@contextmanager
def stalling_mjpeg_server(frames: int) -> Iterator[str]:
    """An HTTP MJPEG camera on localhost that sends `frames` frames, then keeps the connection
    open without sending anything (a stalled network camera); its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    done = threading.Event()
    jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))[1].tobytes()

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            if frames:
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\n"
                    b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
                )
            for _ in range(frames):
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                conn.sendall(part % len(jpeg) + jpeg + b"\r\n")
            done.wait(30)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/video.mjpg"
    finally:
        done.set()
        sock.close()
        thread.join(5)


needs_ffmpeg = pytest.mark.skipif(
    not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG), reason="OpenCV built without FFmpeg"
)


@needs_ffmpeg
def test_a_stalled_stream_fails_a_read_within_the_timeout() -> None:
    with stalling_mjpeg_server(frames=3) as url, OpenCVSource(url, timeout_s=1.0) as src:
        assert not src.finite
        for _ in range(3):
            assert src.read() is not None
        started = time.monotonic()
        with pytest.raises(CameraError, match="delivered no frame"):
            src.read()  # OpenCV's own default would block here for 30 s
        assert time.monotonic() - started < 5


@needs_ffmpeg
def test_a_stream_that_never_answers_fails_to_open_within_the_timeout() -> None:
    with stalling_mjpeg_server(frames=0) as url:
        started = time.monotonic()
        with pytest.raises(CameraError, match="cannot open"):
            OpenCVSource(url, timeout_s=1.0)
        assert time.monotonic() - started < 5


# --- video device nodes --------------------------------------------------------------------------

CHAR_DEVICE = "/dev/null"  # stands in for /dev/video0 once its major number is taken as V4L's


def _char_major(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_rdev) if stat.S_ISCHR(st.st_mode) else None


needs_char_device = pytest.mark.skipif(
    _char_major(CHAR_DEVICE) is None, reason="needs /dev/null as a character device"
)


@pytest.fixture
def null_is_a_camera(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(camera_module, "V4L_MAJOR", _char_major(CHAR_DEVICE))


@needs_char_device
def test_other_character_devices_are_not_cameras() -> None:
    assert not is_video_device(CHAR_DEVICE) and not is_live_spec(CHAR_DEVICE)
    with pytest.raises(ValueError, match="is a device but not a camera"):
        open_source(CHAR_DEVICE)


@needs_char_device
def test_video_device_paths_are_live_cameras(
    tmp_path: Path, recording_capture: type[RecordingCapture], null_is_a_camera: None
) -> None:
    by_id = tmp_path / "usb-Webcam_C270-video-index0"  # like /dev/v4l/by-id/...
    by_id.symlink_to(CHAR_DEVICE)
    assert is_video_device(str(by_id)) and not is_video_device(str(FIXTURE / "README.md"))
    assert is_live_spec(str(by_id)) and is_live_spec(CHAR_DEVICE)
    with open_source(str(by_id), width=320, height=240) as src:
        assert isinstance(src, OpenCVSource) and not src.finite
        frames = [src.read() for _ in range(3)]
        assert all(f is not None and f.shape == (480, 640, 3) for f in frames)
        with pytest.raises(CameraError, match="delivered no frame"):
            src.read()  # a live camera fails (to be retried) instead of "ending"
    assert recording_capture.opened == [(str(by_id), cv2.CAP_V4L2)]


@needs_char_device
def test_video_device_that_cannot_be_opened_or_is_unplugged(null_is_a_camera: None) -> None:
    # The real OpenCV: the node exists but is no camera -> a camera error, not "neither ... nor".
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVSource(CHAR_DEVICE)
    # Unplugged: its node is gone; still a camera to retry, not a bad argument.
    gone = "/dev/v4l/by-id/usb-prodrec-test-no-such-camera-video-index0"
    assert is_live_spec(gone)
    with pytest.raises(CameraError, match="plugged in"):
        open_source(gone)


# --- picamera2: a missing library is not a camera fault ------------------------------------------


def test_missing_picamera2_is_a_library_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    for call in (lambda: check_source_library("picamera2"), Picamera2Source):
        with pytest.raises(CameraLibraryMissingError, match="apt install python3-picamera2") as e:
            call()
        assert "--system-site-packages" in str(e.value)
    check_source_library("0")  # other sources need no extra library


def test_present_but_failing_picamera2_is_a_camera_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenCamera:
        def __init__(self) -> None:
            raise RuntimeError("Camera __init__ sequence did not complete.")

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=BrokenCamera))
    check_source_library("picamera2")
    with pytest.raises(CameraError, match="ribbon cable") as e:
        Picamera2Source()
    assert not isinstance(e.value, CameraLibraryMissingError)  # retried by the service


def test_a_stalled_pi_camera_is_a_camera_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    from device.camera import Picamera2Source

    class StalledPicamera2:  # picamera2's job API: capture_array(wait=False) + wait(job, timeout)
        def create_video_configuration(self, **kw: object) -> dict:
            return dict(kw)

        def configure(self, cfg: dict) -> None:
            pass

        def start(self) -> None:
            pass

        def capture_array(self, name: str, wait: bool | None = None) -> object:
            assert wait is False
            return "job"

        def wait(self, job: object, timeout: float | None = None) -> np.ndarray:
            assert timeout is not None  # a blocking wait would hang the service
            self.queued = True  # as picamera2: the timed-out job stays in its queue
            raise TimeoutError

        def cancel_all_and_flush(self) -> None:
            self.queued = False

        def stop(self) -> None:
            # picamera2 runs stop() after the queued jobs: a stale capture would block it forever
            assert not getattr(self, "queued", False), "stop() behind a stale capture job"

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=StalledPicamera2))
    with Picamera2Source() as cam, pytest.raises(CameraError, match="ribbon cable"):
        cam.read()


def test_frame_sources_are_chosen_from_the_registry(tmp_path: Path, monkeypatch) -> None:
    from device import camera

    names = {
        "picamera2": "picamera2",
        " 0 ": "camera index",
        "synthetic:photos": "synthetic scene",
        str(tmp_path): "folder of images",
        "rtsp://cam/stream": "video file, device or URL (OpenCV)",
    }
    for spec, kind in names.items():
        assert camera.source_kind(spec).name == kind, spec

    class Fake:
        finite = True

    kinds = [camera.SourceKind("fake", lambda s: s == "fake:", lambda s, **kw: Fake())]
    monkeypatch.setattr(camera, "SOURCE_KINDS", kinds + camera.SOURCE_KINDS)
    assert isinstance(camera.open_source("fake:"), Fake)  # a new kind is one registry entry
