"""Frame sources: dispatch, clear errors, and (on a Pi / with a camera) real capture."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from device.camera import FolderSource, OpenCVSource, Picamera2Source, is_live_spec, open_source
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
