"""The web page's password file, sessions, CSRF and login limiting (no web framework needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from device.config import Config, ConfigError, config_from_dict
from device.web.password import (
    check_bind_allowed,
    hash_password,
    is_local_host,
    password_path,
    read_password_hash,
    verify_password,
    write_password,
)
from device.web.security import LoginLimiter, Sessions, csrf_ok


def _config(tmp_path: Path, **web: object) -> Config:
    return config_from_dict({"gallery": {"path": str(tmp_path / "g.db")}, "web": web})


def test_hash_is_salted_and_verifies() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b  # a fresh salt each time
    assert a.startswith("scrypt$") and "correct" not in a
    assert verify_password("correct horse", a) and verify_password("correct horse", b)
    assert not verify_password("correct horsE", a)
    assert not verify_password("correct horse", "scrypt$garbage")
    with pytest.raises(ValueError, match="at least 8"):
        hash_password("short")


def test_password_file_beside_the_database_owner_only(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = password_path(cfg)
    assert path == tmp_path / "web-password"
    assert read_password_hash(path) is None
    write_password(path, "s3cret-pass")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = read_password_hash(path)
    assert stored is not None and verify_password("s3cret-pass", stored)
    assert not list(tmp_path.glob(".*tmp"))  # written whole, nothing left behind
    other = _config(tmp_path, password_file=str(tmp_path / "elsewhere"))
    assert password_path(other) == tmp_path / "elsewhere"
    (tmp_path / "elsewhere").write_text("not a hash")
    with pytest.raises(ValueError, match="set-password"):
        read_password_hash(tmp_path / "elsewhere")


def test_non_local_bind_needs_a_password(tmp_path: Path) -> None:
    assert check_bind_allowed(_config(tmp_path)) is None  # 127.0.0.1 without password: fine
    public = _config(tmp_path, host="0.0.0.0")
    with pytest.raises(ValueError, match="set-password"):
        check_bind_allowed(public)
    write_password(password_path(public), "s3cret-pass")
    stored = check_bind_allowed(public)
    assert stored is not None and verify_password("s3cret-pass", stored)
    # With a password, the local server requires it too.
    assert check_bind_allowed(_config(tmp_path)) == stored


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("192.168.1.20", False),
        ("::", False),
        ("evil.example", False),
    ],
)
def test_is_local_host(host: str, local: bool) -> None:
    assert is_local_host(host) is local


def test_web_config_ranges() -> None:
    assert Config().web.host == "127.0.0.1" and Config().web.port == 8080
    assert Config().web.enabled
    with pytest.raises(ConfigError, match="port"):
        config_from_dict({"web": {"port": 80}})
    with pytest.raises(ConfigError, match="live_fps"):
        config_from_dict({"web": {"live_fps": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"web": {"passwd": "x"}})


def test_sessions_expire_and_are_bounded() -> None:
    now = [0.0]
    sessions = Sessions(60.0, clock=lambda: now[0])
    s = sessions.create()
    assert sessions.get(s.token) is s and s.csrf != s.token
    assert sessions.get("nope") is None and sessions.get(None) is None
    now[0] = 61.0
    assert sessions.get(s.token) is None
    many = [sessions.create() for _ in range(300)]
    assert sessions.get(many[0].token) is None  # the oldest dropped
    assert sessions.get(many[-1].token) is many[-1]
    sessions.drop(many[-1].token)
    assert sessions.get(many[-1].token) is None


def test_csrf_comparison() -> None:
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd") and not csrf_ok("abc", None) and not csrf_ok("abc", "")


def test_login_limiter_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("1.2.3.4") == 0
        limiter.failed("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") == pytest.approx(60.0)
    assert limiter.retry_after("5.6.7.8") == 0  # per client
    now[0] = 30.0
    assert limiter.retry_after("1.2.3.4") == pytest.approx(30.0)
    now[0] = 60.5
    assert limiter.retry_after("1.2.3.4") == 0
    limiter.failed("1.2.3.4")
    limiter.succeeded("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") == 0


def test_device_imports_without_the_web_framework() -> None:
    """`import device` (and the CLI, the password command, the start-up check) must work on a
    machine without Starlette/uvicorn; only the server itself needs them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'multipart', 'python_multipart'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "import device, device.cli, device.app, device.web.password, device.web.runner\n"
        "from device.config import Config\n"
        "cfg = Config().replace('gallery', path='/nonexistent/prodrec/g.db')\n"
        "assert device.web.runner.check_web(cfg) is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_live_image_shows_roi_and_box_and_is_encoded_once_per_frame() -> None:
    import cv2
    import numpy as np

    from device.framehub import FrameHub, FrameSnapshot
    from device.web.live import BOX_COLOUR, ROI_COLOUR, FrameEncoder

    hub = FrameHub()
    enc = FrameEncoder(hub, max_width=320, quality=95)
    assert enc.latest() is None
    image = np.full((480, 640, 3), 40, np.uint8)
    hub.publish(FrameSnapshot(7, 0.0, image, (40, 40, 560, 400), (200, 160, 200, 160), "placed"))
    first = enc.latest()
    assert first is not None and first.number == 7 and first.state == "placed"
    assert enc.latest() is first and enc.encoded == 1  # several viewers, one encoding
    assert np.all(image == 40)  # the loop's frame is never drawn on
    out = cv2.imdecode(np.frombuffer(first.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (240, 320, 3)  # shrunk to [web] live_width

    b, g, r = (int(v) for v in out[120, 20])  # the ROI's left edge at x = 40 / 2: amber
    assert r > b + 80 and g > b + 80, (b, g, r)
    b, g, r = (int(v) for v in out[120, 100])  # the box's left edge at x = 200 / 2: green
    assert g > r + 60 and g > b + 60, (b, g, r)
    assert np.all(np.abs(out[120, 60].astype(int) - 40) < 10)  # in between: the frame
    assert ROI_COLOUR != BOX_COLOUR
    hub.publish(FrameSnapshot(8, 0.1, image, None, None, "empty"))
    assert enc.latest().number == 8 and enc.encoded == 2


def test_synthetic_live_source_loops_in_real_time(tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from device.camera import is_live_spec, open_source
    from device.synthetic import LoopingSource, SyntheticScene, SyntheticSource

    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    scene = SyntheticScene(64, 48, seed=0, noise=0.0)
    src = LoopingSource(SyntheticSource(scene, [], 3), fps=10.0, clock=lambda: now[0], sleep=sleep)
    frames = [src.read() for _ in range(7)]  # more than the 3 frames of the scene: it loops
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)
    assert np.array_equal(frames[0], frames[3]) and src.source.index == 1
    assert len(slept) == 7 and all(abs(s - 0.1) < 1e-9 for s in slept)  # 10 frames a second
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "grocery" / "test"
    for name in ("Banana", "Oatly-Oat-Milk"):
        shutil.copytree(fixture / name, tmp_path / name)
    live = open_source(f"synthetic-live:{tmp_path}", width=160, height=120, fps=240.0)
    assert isinstance(live, LoopingSource) and live.finite is False
    assert live.read().shape == (120, 160, 3)
    assert is_live_spec(f"synthetic-live:{tmp_path}")  # failures retried, like a camera
