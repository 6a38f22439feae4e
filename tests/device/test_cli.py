"""`python -m device ...`: in-process with the stand-in embedder, and as subprocesses for signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import cli
from device.gallery import Gallery
from device.service import Service
from device.synthetic import Placement, SyntheticScene, SyntheticSource, write_frames

from .conftest import FIXTURE
from .fakes import FakeEmbedder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> FakeEmbedder:
    fake = FakeEmbedder()
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: fake)
    return fake


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(
        f"""
[detector]
learn_frames = 10
[placement]
stable_frames = 4
empty_frames = 4
[gallery]
path = "{tmp_path / "g.db"}"
[service]
log_level = "WARNING"
retry_initial_s = 0.01
retry_max_s = 0.02
[web]
enabled = false  # the page has its own tests (tests/web); here it would only hold port 8080
"""
    )
    return p


def photo_tree(tree: Path, products: tuple[str, ...], n: int = 3) -> Path:
    """tree/<product>/*.jpg with the first n fixture photos of each product."""
    for product in products:
        (tree / product).mkdir(parents=True)
        for src in sorted((FIXTURE / "train" / product).glob("*.jpg"))[:n]:
            (tree / product / src.name).write_bytes(src.read_bytes())
    return tree


def test_products_and_gallery_commands(
    tmp_path: Path, config_file: Path, fake_model, capsys
) -> None:
    c = ["--config", str(config_file)]
    tree = photo_tree(tmp_path / "photos", ("Banana", "Red-Bell-Pepper"))
    assert cli.main(["enroll", *c, "--from-images", str(tree)]) == 0
    assert cli.main(["products", "list", *c, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["name"], p["views"]) for p in listed] == [("Banana", 3), ("Red-Bell-Pepper", 3)]
    assert cli.main(["products", "rename", *c, "Red-Bell-Pepper", "Pepper"]) == 0
    assert cli.main(["products", "delete", *c, "Nope"]) == 2
    assert "no product named 'Nope'" in capsys.readouterr().err
    assert cli.main(["gallery", "export", *c, str(tmp_path / "set.zip")]) == 0
    assert cli.main(["products", "delete", *c, "Banana"]) == 0
    assert cli.main(["gallery", "import", *c, str(tmp_path / "set.zip")]) == 0
    assert cli.main(["products", "list", *c]) == 0
    out = capsys.readouterr().out
    assert "Banana" in out and "Pepper" in out
    assert (
        cli.main(
            ["gallery", "import", *c, "--db", str(tmp_path / "other.db"), str(tmp_path / "set.zip")]
        )
        == 0
    )
    with Gallery(tmp_path / "other.db") as g:
        assert {p.name for p in g.products()} == {"Banana", "Pepper"}


def placements_video(path: Path, photos: list, frames: int) -> Path:
    """A video file of the photos placed in turn, 20 frames each with 10 empty between."""
    return write_frames(
        SyntheticSource(
            SyntheticScene(seed=8, noise=2.0),
            [
                Placement(lb, im, (150 + 60 * i, 120, 180, 180), 20 + 30 * i, 40 + 30 * i)
                for i, (lb, im) in enumerate(photos)
            ],
            frames,
        ),
        path,
    )


def test_run_prints_json_events(
    tmp_path: Path, config_file: Path, fake_model, photos, capsys
) -> None:
    video = placements_video(tmp_path / "scene.avi", photos[:3], 115)
    code = cli.main(
        [
            "run",
            "--config",
            str(config_file),
            "--source",
            str(video),
            "--save-crops",
            str(tmp_path / "c"),
        ]
    )
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == 3 and all(e["status"] == "unknown" for e in events)
    assert set(events[0]) >= {"time", "label", "status", "score", "runner_up", "box", "latency_ms"}
    assert len(list((tmp_path / "c").glob("*.jpg"))) == 3
    assert cli.main(["gallery", "events", "--config", str(config_file)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_errors_give_clear_exit_codes(
    tmp_path: Path, config_file: Path, monkeypatch, capsys
) -> None:
    c = ["--config", str(config_file)]
    # A mismatched bundle: model.json disagrees with the .tflite -> the real loader refuses it.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.tflite").write_bytes(b"\x00" * 64)
    (bundle / "model.json").write_text('{"format": "prodrec-bundle", "format_version": 1}')
    assert cli.main(["run", *c, "--model", str(bundle), "--source", str(tmp_path)]) == 3
    assert cli.main(["run", *c, "--model", str(tmp_path / "missing")]) == 3
    assert "model" in capsys.readouterr().err
    # A corrupt product database.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 1000)
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: FakeEmbedder())
    assert cli.main(["products", "list", *c, "--db", str(junk)]) == 4
    assert "corrupt" in capsys.readouterr().err
    # No calibrated threshold in the bundle and none configured.
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: FakeEmbedder(threshold=None))
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.jpg").write_bytes((FIXTURE / "train" / "Banana" / "Banana_001.jpg").read_bytes())
    assert cli.main(["run", *c, "--source", str(frames)]) == 2
    assert "threshold" in capsys.readouterr().err
    assert cli.main(["run", *c, "--source", "no-such-video.mp4"]) == 2
    assert cli.main(["run", *c, "--threshold", "3"]) == 2  # out of range, named


class Reader:
    """Collects a subprocess' stderr in a thread, to wait for a given text (also a prompt, which
    ends without a newline)."""

    def __init__(self, stream) -> None:
        self.text = ""
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        while chunk := stream.read(1):
            with self.cond:
                self.text += chunk
                self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = 30) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: text in self.text, timeout):
                raise AssertionError(f"{text!r} not seen in {self.text}")


def fake_cli(*args: str, hold_at: int = 0, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env["PRODREC_TEST_HOLD_AT"] = str(hold_at)
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT dumps every thread's stack (see exit_code)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.device.fake_cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def exit_code(proc: subprocess.Popen, err: Reader, timeout: float = 30) -> int:
    """proc's exit code; if it hangs, its threads' stacks (faulthandler on SIGABRT) in the
    failure, to say where."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired as exc:
        proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        proc.kill()
        time.sleep(0.5)  # let the reader thread take the last of stderr
        raise AssertionError(
            f"no exit {timeout:g} s after the signal; its stderr:\n{err.text}"
        ) from exc


def test_sigterm_during_enrollment_stores_nothing(
    tmp_path: Path, config_file: Path, photos
) -> None:
    label, image = photos[2]
    video = write_frames(
        SyntheticSource(
            SyntheticScene(seed=9, noise=2.0),
            [Placement(label, image, (200, 120, 200, 200), 15, 80)],
            80,
        ),
        tmp_path / "enroll.avi",
    )
    db = tmp_path / "g.db"
    proc = fake_cli("enroll", "Banana", "--config", str(config_file), "--source", str(video))
    err = Reader(proc.stderr)
    proc.stdin.write("\n\n")  # scene clear; view 1 placed
    proc.stdin.flush()
    err.wait_for("view 1/4 taken")
    err.wait_for("[2/4]")  # now at the console prompt for view 2
    proc.send_signal(signal.SIGTERM)
    assert exit_code(proc, err) == 130
    err.wait_for("nothing was stored")
    with Gallery(db) as g:
        assert len(g) == 0 and g.conn.execute("SELECT COUNT(*) FROM views").fetchone()[0] == 0


def test_sigterm_stops_run_cleanly(tmp_path: Path, config_file: Path) -> None:
    proc = fake_cli(
        "run",
        "--config",
        str(config_file),
        "--log-level",
        "INFO",
        "--source",
        f"synthetic:{FIXTURE / 'test'}",
        "--db",
        str(tmp_path / "g.db"),
        hold_at=40,  # after the first placement (frames 20..36), before the second (48..)
    )
    err = Reader(proc.stderr)
    err.wait_for("test: holding the source")
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert exit_code(proc, err) == 0, err.text
    assert "signal 15: stopping" in err.text and "Traceback" not in err.text
    # Stopped exactly there: one event printed, and its row written before the exit.
    (line,) = out.splitlines()
    assert json.loads(line)["status"] == "unknown"
    with Gallery(tmp_path / "g.db") as g:
        assert [r["id"] for r in g.events(10)] == [json.loads(line)["id"]]


# --- camera faults: what is retried and what stops the start ------------------------------------


@pytest.mark.skipif(not Path("/dev/null").is_char_device(), reason="needs /dev/null")
def test_run_retries_a_video_device_like_a_camera(
    tmp_path: Path, config_file: Path, fake_model, monkeypatch, capsys
) -> None:
    import device.camera

    # /dev/null stands in for /dev/video0: its major number taken as video4linux's.
    monkeypatch.setattr(device.camera, "V4L_MAJOR", os.major(os.stat("/dev/null").st_rdev))

    class FlakyCapture:  # 12 frames per open, then "unplugged"
        opens = 0

        def __init__(self, *args: object) -> None:
            FlakyCapture.opens += 1
            self.left = 12

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return True

        def set(self, prop: int, value: float) -> bool:
            return True

        def read(self) -> tuple[bool, np.ndarray | None]:
            self.left -= 1
            return (True, np.full((240, 320, 3), 90, np.uint8)) if self.left >= 0 else (False, None)

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FlakyCapture)
    device = tmp_path / "video-index0"  # like /dev/v4l/by-id/usb-...-video-index0
    device.symlink_to("/dev/null")
    code = cli.main(
        ["run", "--config", str(config_file), "--source", str(device), "--max-frames", "30"]
    )
    assert code == 0, capsys.readouterr().err
    assert FlakyCapture.opens == 3  # reopened after each failure, not taken as a video's end
    assert "camera failure" in capsys.readouterr().err


def test_run_fails_at_once_without_picamera2(
    config_file: Path, fake_model, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError

    def retried(*args: object, **kw: object) -> None:
        raise AssertionError("a missing library must not be retried")

    monkeypatch.setattr(Service, "_wait", retried)
    assert cli.main(["run", "--config", str(config_file), "--source", "picamera2"]) == 5
    err = capsys.readouterr().err
    assert "sudo apt install python3-picamera2" in err and "--system-site-packages" in err


def test_run_retries_a_picamera2_camera_that_fails(
    config_file: Path, fake_model, monkeypatch, capsys
) -> None:
    class FakePicamera2:  # the first start fails (camera busy), the next one works
        made = 0

        def __init__(self) -> None:
            FakePicamera2.made += 1
            self.n = FakePicamera2.made

        def create_video_configuration(self, **kw: object) -> dict:
            return dict(kw)

        def configure(self, cfg: dict) -> None:
            pass

        def start(self) -> None:
            if self.n == 1:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")

        def capture_array(self, name: str) -> np.ndarray:
            return np.full((480, 640, 3), 90, np.uint8)

        def stop(self) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    args = ["run", "--config", str(config_file), "--source", "picamera2", "--max-frames", "3"]
    assert cli.main(args) == 0
    assert FakePicamera2.made == 2
    assert "Device or resource busy" in capsys.readouterr().err


# --- saving crops --------------------------------------------------------------------------------


def test_run_refuses_a_crop_folder_it_cannot_write(
    tmp_path: Path, config_file: Path, fake_model, capsys
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    source = ["--source", f"synthetic:{FIXTURE / 'test'}", "--max-frames", "5"]
    for target in (afile / "crops", afile):
        code = cli.main(["run", "--config", str(config_file), *source, "--save-crops", str(target)])
        assert code == 2
        err = capsys.readouterr().err
        assert f"cannot save crops in {target}" in err and "Traceback" not in err


def test_a_crop_that_cannot_be_saved_is_only_a_warning(
    tmp_path: Path, config_file: Path, fake_model, photos, monkeypatch, capsys
) -> None:
    video = placements_video(tmp_path / "scene.avi", photos[:2], 80)
    crops = tmp_path / "crops"
    real_imwrite = cv2.imwrite
    calls: list[str] = []

    def full_disk_once(path: str, image: np.ndarray) -> bool:
        calls.append(path)
        return False if len(calls) == 1 else real_imwrite(path, image)

    monkeypatch.setattr(cv2, "imwrite", full_disk_once)
    c = ["--config", str(config_file), "--source", str(video), "--save-crops", str(crops)]
    assert cli.main(["run", *c]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2 and "crop_file" not in events[0] and "crop_file" in events[1]
    assert "could not save the crop" in err
    assert len(list(crops.glob("*.jpg"))) == 1


# --- enrollment from photos, interrupted ---------------------------------------------------------


class InterruptingEmbedder(FakeEmbedder):
    """Ctrl-C (or SIGTERM, which the CLI turns into KeyboardInterrupt) at the n-th embedding."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def embed(self, crop_bgr: np.ndarray) -> np.ndarray:
        if self.calls + 1 == self.at:
            raise KeyboardInterrupt
        return super().embed(crop_bgr)


def test_interrupted_photo_enrollment_says_what_was_stored_and_resumes(
    tmp_path: Path, config_file: Path, monkeypatch, capsys
) -> None:
    products = ("Arla-Standard-Milk", "Banana", "Oatly-Oat-Milk", "Red-Bell-Pepper")
    tree = photo_tree(tmp_path / "photos", products)
    c = ["--config", str(config_file)]
    # Interrupted while embedding the third product's second photo.
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: InterruptingEmbedder(at=8))
    assert cli.main(["enroll", *c, "--from-images", str(tree)]) == 130
    err = capsys.readouterr().err
    assert "stored 2 of 4 products: Arla-Standard-Milk, Banana" in err
    assert "not stored: Oatly-Oat-Milk, Red-Bell-Pepper" in err and "--skip-existing" in err
    assert "nothing was stored" not in err
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: FakeEmbedder())
    assert cli.main(["enroll", *c, "--from-images", str(tree)]) == 2
    assert "--skip-existing" in capsys.readouterr().err  # the clash names the way out
    assert cli.main(["enroll", *c, "--from-images", str(tree), "--skip-existing"]) == 0
    assert (
        "Skipping 2 product(s) already stored: Arla-Standard-Milk, Banana"
        in capsys.readouterr().err
    )
    with Gallery(tmp_path / "g.db") as g:
        assert [(p.name, p.n_views) for p in g.products()] == [(p, 3) for p in products]
    with pytest.raises(SystemExit):
        cli.main(["enroll", *c, "--from-images", str(tree), "--skip-existing", "--append"])
    assert cli.main(["enroll", *c, "Tea", "--skip-existing"]) == 2


def test_flags_are_checked_and_named_in_errors(tmp_path: Path, capsys) -> None:
    db = ["--db", str(tmp_path / "g.db")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *db, "--max-frames", "-1"])
    assert exit_info.value.code == 2
    assert "1 or more" in capsys.readouterr().err
    assert cli.main(["run", *db, "--threshold", "2"]) == 2
    assert "--threshold 2.0:" in capsys.readouterr().err
    # Reading commands never create a database: a mistyped --db is an error, not an empty set.
    for argv in (["products", "list"], ["gallery", "events"], ["gallery", "export", "x.zip"]):
        assert cli.main([*argv, *db]) == 4, argv
        assert "no product database at" in capsys.readouterr().err
    assert not (tmp_path / "g.db").exists()


def test_failing_commands_create_no_database_and_exports_never_overwrite_it(
    tmp_path: Path, fake_model, capsys
) -> None:
    db = tmp_path / "g.db"
    assert cli.main(["enroll", "--db", str(db), "--from-images", str(tmp_path / "none")]) == 2
    assert cli.main(["gallery", "import", str(tmp_path / "x.zip"), "--db", str(db)]) == 2
    assert not db.exists()
    # --code names one product: refused for a folder of several.
    argv = ["enroll", "--db", str(db), "--from-images", str(FIXTURE / "train"), "--code", "1"]
    assert cli.main(argv) == 2 and "--code gives one product's code" in capsys.readouterr().err
    assert not db.exists()
    assert (
        cli.main(["enroll", "--db", str(db), "--from-images", str(FIXTURE / "train" / "Banana")])
        == 0
    )
    capsys.readouterr()
    assert cli.main(["gallery", "export", str(db), "--db", str(db)]) == 2
    assert "is the product database itself" in capsys.readouterr().err
    other = tmp_path / "other.zip"
    other.write_bytes(b"keep me")
    assert cli.main(["gallery", "export", str(other), "--db", str(db)]) == 2
    assert "already exists" in capsys.readouterr().err and other.read_bytes() == b"keep me"
    assert cli.main(["gallery", "export", str(other), "--db", str(db), "--overwrite"]) == 0
    # Importing onto itself with --replace says what it replaced.
    assert cli.main(["gallery", "import", str(other), "--db", str(db), "--replace"]) == 0
    assert "replaced: Banana;" in capsys.readouterr().err
    with Gallery(db) as g:
        assert [p.name for p in g.products()] == ["Banana"]


def test_product_names_are_trimmed_and_unicode_normalised(
    tmp_path: Path, fake_model, capsys
) -> None:
    import unicodedata

    db = ["--db", str(tmp_path / "g.db")]
    decomposed = unicodedata.normalize("NFD", "Havre mjölk")  # as a folder copied off a Mac
    photos = tmp_path / decomposed
    photos.mkdir()
    for src in sorted((FIXTURE / "train" / "Banana").glob("*.jpg"))[:2]:
        (photos / src.name).write_bytes(src.read_bytes())
    assert cli.main(["enroll", *db, "--from-images", str(photos)]) == 0
    assert cli.main(["products", "rename", " Havre mjölk ", "  Oat milk  ", *db]) == 0
    assert "to 'Oat milk'" in capsys.readouterr().err
    assert cli.main(["products", "delete", " Oat milk", *db]) == 0
    with Gallery(tmp_path / "g.db") as g:
        assert len(g) == 0
