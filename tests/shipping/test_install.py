"""systemd/install.sh and uninstall.sh in --dry-run and --root (temporary root) modes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"


def run(script: Path, *args: str, systemd_version: str = "252") -> subprocess.CompletedProcess:
    env = {**os.environ, "SYSTEMD_VERSION": systemd_version}
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60
    )


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """Stands in for models/default: install.sh only copies the two files."""
    path = tmp_path / "bundle"
    path.mkdir()
    (path / "model.json").write_text('{"name": "test"}\n')
    (path / "model.tflite").write_bytes(b"TFL3 fake")
    return path


def test_scripts_parse() -> None:
    for script in (INSTALL, UNINSTALL, REPO / "systemd" / "prodrec-cli.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    proc = run(INSTALL, "--dry-run", "--root", str(root), "--model", str(bundle))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not root.exists()
    expected = [
        "+ apt-get update",
        "apt-get install -y --no-install-recommends python3 python3-venv python3-pip "
        "python3-numpy python3-picamera2",
        "useradd --system --user-group --groups video",
        f"python3 -m venv --system-site-packages --clear {root}/opt/prodrec/venv",
        f"pip install --disable-pip-version-check --upgrade -r {REPO}/systemd/requirements-pi.txt "
        f"-c {root}/opt/prodrec/constraints.txt",
        f"cp -R {REPO}/device {root}/opt/prodrec/app.new/device",
        f"install -m 0755 {REPO}/systemd/prodrec-cli.sh {root}/usr/local/bin/prodrec",
        f"install -m 0640 {REPO}/device/default_config.toml {root}/etc/prodrec/config.toml",
        f"cp {bundle}/model.json {bundle}/model.tflite {root}/var/lib/prodrec/model.new/",
        f"chown -R prodrec:prodrec {root}/var/lib/prodrec",
        f"install -m 0644 {REPO}/systemd/prodrec.service {root}/etc/systemd/system/prodrec.service",
        "+ systemctl daemon-reload",
        "+ systemctl enable prodrec.service",
        "+ systemctl restart prodrec.service",
    ]
    for action in expected:
        assert action in out, f"missing action: {action}\n{out}"
    # In order: packages before the venv, the venv before the unit, the unit before starting it.
    positions = [out.index(a) for a in expected]
    assert positions == sorted(positions)
    assert "[skipped" not in out  # dry-run prints commands as they would run


def test_root_install_upgrade_and_uninstall(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    proc = run(INSTALL, "--root", str(root), "--model", str(bundle))
    assert proc.returncode == 0, proc.stderr
    # System-wide commands are shown, not run, in a temporary root.
    assert "systemctl enable prodrec.service    [skipped: --root]" in proc.stdout
    assert "apt-get update    [skipped: --root]" in proc.stdout

    unit = root / "etc/systemd/system/prodrec.service"
    config = root / "etc/prodrec/config.toml"
    model = root / "var/lib/prodrec/model"
    app = root / "opt/prodrec/app"
    assert unit.read_text() == (REPO / "systemd/prodrec.service").read_text()
    assert config.read_text() == (REPO / "device/default_config.toml").read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert (model / "model.tflite").read_bytes() == b"TFL3 fake"
    assert (app / "systemd/uninstall.sh").is_file()
    assert os.access(root / "usr/local/bin/prodrec", os.X_OK)
    assert not (root / "etc/systemd/system/prodrec.service.d").exists()  # systemd 252
    # The installed code is a working package.
    check = subprocess.run(
        [sys.executable, "-c", "import device.sdnotify, device.bundle; print(device.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(app)},
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(app))
    # The unit's ExecStartPre, with the installed code, accepts the installed configuration.
    validate = subprocess.run(
        [sys.executable, "-m", "device", "run", "--validate-config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(app)},
    )
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout.startswith("OK")

    # Upgrade: the user's config and model and the product database are kept; code is replaced.
    config.write_text("# edited by the user\n")
    (model / "model.tflite").write_bytes(b"user model")
    (root / "var/lib/prodrec/gallery.db").write_bytes(b"products")
    (app / "device" / "stale_module.py").write_text("")
    proc = run(INSTALL, "--root", str(root), "--model", str(bundle), systemd_version="257")
    assert proc.returncode == 0, proc.stderr
    assert "keeping the existing" in proc.stdout
    assert config.read_text() == "# edited by the user\n"
    assert (root / "etc/prodrec/config.toml.default").is_file()
    assert (model / "model.tflite").read_bytes() == b"user model"
    assert (root / "var/lib/prodrec/gallery.db").read_bytes() == b"products"
    assert not (app / "device" / "stale_module.py").exists()
    assert not (root / "opt/prodrec/app.new").exists()
    assert not (root / "opt/prodrec/app.old").exists()
    dropin = root / "etc/systemd/system/prodrec.service.d/restart-backoff.conf"
    assert dropin.read_text() == (REPO / "systemd/restart-backoff.conf").read_text()

    # Back on an old systemd the drop-in would only produce warnings: removed.
    assert run(INSTALL, "--root", str(root), "--no-apt").returncode == 0
    assert not dropin.exists()
    override = root / "etc/systemd/system/prodrec.service.d/override.conf"
    override.write_text("[Service]\nEnvironment=FOO=1\n")  # the admin's `systemctl edit`

    # Uninstall keeps the product database, the model and the config...
    proc = run(UNINSTALL, "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert not unit.exists() and not (root / "opt/prodrec").exists()
    assert not (root / "usr/local/bin/prodrec").exists()
    assert (root / "var/lib/prodrec/gallery.db").read_bytes() == b"products"
    assert config.exists()
    assert override.exists()
    # ... and --purge deletes them.
    proc = run(UNINSTALL, "--root", str(root), "--purge")
    assert proc.returncode == 0, proc.stderr
    assert "userdel prodrec    [skipped: --root]" in proc.stdout
    assert not (root / "var/lib/prodrec").exists() and not (root / "etc/prodrec").exists()
    assert not override.exists()


def test_missing_model_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    proc = run(INSTALL, "--root", str(tmp_path / "root"), "--model", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr
    assert "no model bundle" in proc.stderr
    assert not (tmp_path / "root/var/lib/prodrec/model").exists()


def test_uninstall_dry_run_changes_nothing(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    assert run(INSTALL, "--root", str(root), "--model", str(bundle)).returncode == 0
    before = files_under(root)
    proc = run(UNINSTALL, "--root", str(root), "--purge", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"+ rm -rf {root}/var/lib/prodrec" in proc.stdout
    assert "+ systemctl disable --now prodrec.service" in proc.stdout
    assert files_under(root) == before


@pytest.mark.parametrize("script", [INSTALL, UNINSTALL])
def test_bad_option(script: Path) -> None:
    proc = run(script, "--frobnicate")
    assert proc.returncode != 0
    assert "unknown option '--frobnicate'" in proc.stderr


def test_help(tmp_path: Path) -> None:
    proc = run(INSTALL, "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "--root DIR" in proc.stdout


def test_pi_requirements_leave_numpy_to_apt() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (REPO / "systemd/requirements-pi.txt").read_text().splitlines()
    ]
    pins = [line for line in lines if line]
    assert pins, "no requirements"
    assert not any(p.lower().startswith("numpy") for p in pins)
    assert all("==" in p for p in pins), pins  # exact pins: reproducible installs
    names = {p.split("==")[0].lower() for p in pins}
    assert {"opencv-python-headless", "ai-edge-litert"} <= names
    opencv = next(p for p in pins if p.startswith("opencv-python-headless=="))
    major, minor = (int(x) for x in opencv.split("==")[1].split(".")[:2])
    assert (major, minor) < (4, 12), (
        "opencv-python-headless >= 4.12 needs numpy 2 (Bookworm has 1.24)"
    )


def _real_bundle(path: Path, threshold: float | None = 0.5, cohort: bool = False) -> Path:
    """A bundle whose model.json passes device.bundle's checks (sha256 of the .tflite and, with
    `cohort`, of the format-2 cohort file)."""
    from device.bundle import (
        Adaptation,
        BundleMeta,
        InputSpec,
        OutputSpec,
        Provenance,
        Quantization,
        sha256_file,
        write_bundle_meta,
    )

    path.mkdir(parents=True)
    (path / "model.tflite").write_bytes(b"TFL3 " + path.name.encode())
    adaptation = None
    if cohort:
        (path / "cohort.npy").write_bytes(b"cohort of " + path.name.encode())
        adaptation = Adaptation(
            domain_mean=(0.0,) * 32,
            cohort_file="cohort.npy",
            cohort_sha256=sha256_file(path / "cohort.npy"),
        )
    meta = BundleMeta(
        name=path.name,
        model_id=sha256_file(path / "model.tflite"),
        input=InputSpec(height=96, width=96, quantization=Quantization(1.0, 0)),
        output=OutputSpec(embedding_dim=32),
        provenance=Provenance(source_run="test", quantization="int8", created="now"),
        threshold=threshold,
        adaptation=adaptation,
    )
    write_bundle_meta(path, meta)
    return path


def test_the_whole_bundle_is_installed_and_deployed(tmp_path: Path) -> None:
    """Every file of a bundle (the format-2 cohort too) is installed and deployed; an installed
    copy without its cohort (as an older install.sh left it) is completed or replaced."""
    root = tmp_path / "root"
    model = root / "var/lib/prodrec/model"
    first = _real_bundle(tmp_path / "first", cohort=True)
    assert run(INSTALL, "--root", str(root), "--model", str(first)).returncode == 0
    assert sorted(p.name for p in model.iterdir()) == ["cohort.npy", "model.json", "model.tflite"]
    (model / "cohort.npy").unlink()
    proc = run(INSTALL, "--root", str(root), "--model", str(first))
    assert proc.returncode == 0 and "keeping the installed model" in proc.stdout
    assert (model / "cohort.npy").read_bytes() == b"cohort of first"

    deploy = REPO / "systemd" / "deploy-model.sh"
    new = _real_bundle(tmp_path / "new", cohort=True)
    assert run(deploy, str(new), "--root", str(root)).returncode == 0
    assert (model / "cohort.npy").read_bytes() == b"cohort of new"
    (model / "cohort.npy").unlink()
    proc = run(deploy, str(new), "--root", str(root))
    assert proc.returncode == 0 and "already deployed" not in proc.stdout
    assert (model / "cohort.npy").read_bytes() == b"cohort of new"
    previous = root / "var/lib/prodrec/model.previous"
    assert (previous / "cohort.npy").read_bytes() == b"cohort of first"
    # A bundle whose cohort was not copied along is refused; nothing changes.
    partial = _real_bundle(tmp_path / "partial", cohort=True)
    (partial / "cohort.npy").unlink()
    proc = run(deploy, str(partial), "--root", str(root))
    assert proc.returncode != 0 and "copy the whole bundle folder" in proc.stderr
    assert (model / "model.tflite").read_bytes() == b"TFL3 new"


def test_deploy_model_swaps_and_keeps_the_previous(tmp_path: Path, bundle: Path) -> None:
    root = tmp_path / "root"
    deploy = REPO / "systemd" / "deploy-model.sh"
    assert run(INSTALL, "--root", str(root), "--model", str(bundle)).returncode == 0
    (root / "var/lib/prodrec/gallery.db").write_bytes(b"products")
    new = _real_bundle(tmp_path / "new-model")

    proc = run(deploy, str(new), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "systemctl start prodrec.service    [skipped: --root]" in proc.stdout
    model = root / "var/lib/prodrec/model"
    assert (model / "model.tflite").read_bytes() == b"TFL3 new-model"
    assert (root / "var/lib/prodrec/model.previous/model.tflite").read_bytes() == b"TFL3 fake"
    assert (root / "var/lib/prodrec/gallery.db").read_bytes() == b"products"
    assert "systemctl reset-failed prodrec.service" in proc.stdout  # a start limit hit before
    # The same model again (a retry): model.previous stays the real previous model.
    proc = run(deploy, str(new), "--root", str(root))
    assert proc.returncode == 0 and "already deployed" in proc.stdout
    assert (root / "var/lib/prodrec/model.previous/model.tflite").read_bytes() == b"TFL3 fake"
    # ... unless the installed copy is damaged: then it is replaced.
    (model / "model.tflite").write_bytes(b"damaged on the SD card")
    proc = run(deploy, str(new), "--root", str(root), "--no-restart")
    assert proc.returncode == 0 and "already deployed" not in proc.stdout
    assert (model / "model.tflite").read_bytes() == b"TFL3 new-model"
    # A repair is not a new model: model.previous stays the model to roll back to.
    assert "repairing the installed copy" in proc.stdout
    assert (root / "var/lib/prodrec/model.previous/model.tflite").read_bytes() == b"TFL3 fake"
    assert not (root / "var/lib/prodrec/model.damaged").exists()

    # A .tflite that does not match its model.json is refused; nothing changes.
    broken = _real_bundle(tmp_path / "broken")
    (broken / "model.tflite").write_bytes(b"corrupt")
    proc = run(deploy, str(broken), "--root", str(root))
    assert proc.returncode != 0 and "does not match" in proc.stderr
    assert (model / "model.tflite").read_bytes() == b"TFL3 new-model"

    # A bundle without a threshold is refused unless the config sets one.
    uncalibrated = _real_bundle(tmp_path / "uncalibrated", threshold=None)
    proc = run(deploy, str(uncalibrated), "--root", str(root), "--no-restart")
    assert proc.returncode != 0 and "no calibrated threshold" in proc.stderr
    assert (model / "model.tflite").read_bytes() == b"TFL3 new-model"
    config = root / "etc/prodrec/config.toml"
    config.write_text(config.read_text().replace("# threshold = 0.45", "threshold = 0.6"))
    proc = run(deploy, str(uncalibrated), "--root", str(root), "--no-restart")
    assert proc.returncode == 0, proc.stderr
    assert (model / "model.tflite").read_bytes() == b"TFL3 uncalibrated"


def test_web_password_file_sets_the_password_through_the_installed_command(
    tmp_path: Path, bundle: Path
) -> None:
    root = tmp_path / "root"
    secret = tmp_path / "pw"
    secret.write_text("s3cret pass\nsecond line is ignored\n")
    proc = run(INSTALL, "--root", str(root), "--model", str(bundle), "--no-start",
               "--web-password-file", str(secret))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("+ sh -c") and "web" in ln]
    assert len(lines) == 1 and lines[0].endswith("[skipped: --root]"), proc.stdout
    # Run the printed command for real against a stand-in for the installed `prodrec`: it must get
    # the first line on stdin and the installed config, and nothing else.
    fake = root / "usr/local/bin/prodrec"
    record = tmp_path / "record"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\ncat >> {record}\n')
    command = lines[0].removeprefix("+ ").removesuffix("[skipped: --root]").strip()
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == [
        f"web set-password --password-stdin --config {root}/etc/prodrec/config.toml",
        "s3cret pass",
    ]
    # The set-password step comes after the unit is enabled (the command and config exist then).
    assert proc.stdout.index("systemctl enable") < proc.stdout.index(lines[0])


@pytest.mark.parametrize("content", [None, "\nsecond\n", "short\r\n"])
def test_bad_web_password_file_installs_nothing(
    tmp_path: Path, bundle: Path, content: str | None
) -> None:
    root = tmp_path / "root"
    secret = tmp_path / "pw"
    if content is not None:
        secret.write_text(content)
    proc = run(INSTALL, "--root", str(root), "--model", str(bundle),
               "--web-password-file", str(secret))  # fmt: skip
    assert proc.returncode != 0
    assert ("cannot be read" if content is None else "needs 8 at least") in proc.stderr
    assert not (root / "opt").exists()
