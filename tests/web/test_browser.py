"""The web page in a real browser: Debian's chromium, headless, driven by Playwright, against
`python -m device run` on an endless synthetic scene (`synthetic-live:`) with the default model.

Log in; add a product from uploaded photos; see it listed; see the scene's next placement of it
recognised on the live page (pushed by Server-Sent Events); add another product by capturing it
from the live camera. With PRODREC_SCREENSHOTS=DIR it also saves the README's screenshots there.
Skipped, saying why, without chromium (`apt-get install chromium`; .ci/run installs it) or
Playwright (`pip install playwright`; its own browser download is not needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "enroll"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UPLOADED = "Oatly-Oat-Milk"  # added from its photos
CAPTURED = "Bravo-Orange-Juice"  # added by "capture" from the live camera
PASSWORD = "browser-test-pw"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
    ),
]


def recognised(page: Any, product: str) -> Any:
    """The live page's recognitions of `product` as a known product (not as a runner-up)."""
    label = page.locator(".label", has_text=re.compile(f"^{re.escape(product)}$"))
    return page.locator("#recent li").filter(has=label).filter(has=page.locator(".status-known"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"`device run` exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if json.load(r)["ok"]:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("`device run` did not serve a healthy /healthz in time")


@pytest.fixture
def device_run(tmp_path: Path, default_bundle_dir: Path) -> Iterator[str]:
    scene = tmp_path / "scene"
    for name in (UPLOADED, CAPTURED):
        shutil.copytree(DEMO / name, scene / name)
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[camera]
source = "synthetic-live:{scene}"
fps = 15.0
roi = [0.02, 0.02, 0.98, 0.98]
[model]
path = "{default_bundle_dir}"
num_threads = 1
[gallery]
path = "{tmp_path / "gallery.db"}"
[service]
save_crops = "{tmp_path / "crops"}"
[web]
host = "127.0.0.1"
port = {port}
live_fps = 4.0
""",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "device"]
    subprocess.run(
        [*cmd, "web", "set-password", "--password-stdin", "--config", str(config)],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        cwd=REPO,
    )
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [*cmd, "run", "--config", str(config)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "run.log").read_text()[-3000:])
    assert proc.returncode == 0, f"`device run` stopped with {proc.returncode}"


def test_log_in_add_products_and_see_them_recognised(device_run: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    shots = os.environ.get("PRODREC_SCREENSHOTS")

    def shot(page: object, name: str, *, full: bool = False) -> None:
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            path = str(Path(shots) / f"web-{name}.png")
            page.screenshot(path=path, full_page=full)  # type: ignore[attr-defined]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})
            page.set_default_timeout(30_000)
            expect = sync_api.expect
            expect.set_options(timeout=30_000)
            page.goto(device_run)

            # Log in (a wrong password first: refused, said so).
            page.fill("#login-form input[name=password]", "not-the-password")
            page.click("#login-form button")
            expect(page.locator("#message")).to_contain_text("wrong password")
            page.fill("#login-form input[name=password]", PASSWORD)
            page.click("#login-form button")
            expect(page.locator("#nav")).to_be_visible()
            expect(page.locator("#live-state")).to_contain_text("frame")

            # Add a product from photos (the phone's file picker).
            page.click("nav a[data-tab=add]")
            form = page.locator("#upload-form")
            form.locator("input[name=name]").fill(UPLOADED)
            form.locator("input[name=code]").fill("7394376616037")
            form.locator("input[name=photos]").set_input_files(
                sorted(str(p) for p in (DEMO / UPLOADED).glob("*.jpg"))
            )
            form.locator("button").click()
            expect(page.locator("#message")).to_contain_text(f"Added {UPLOADED}: 4 views")

            # Listed, with its thumbnail.
            page.click("nav a[data-tab=products]")
            row = page.locator(f"#products-table tr[data-name='{UPLOADED}']")
            expect(row).to_contain_text("7394376616037")
            expect(row.locator("img")).to_have_count(1)

            # The scene places it: recognised, pushed to the live page.
            page.click("nav a[data-tab=live]")
            known = recognised(page, UPLOADED)
            expect(known.first).to_be_visible(timeout=45_000)
            shot(page, "live")

            # Add the other product by capturing it from the live camera. The scene shows the two
            # products in turn (3 s each, 2 s apart): the uploaded one was just recognised, so
            # the next steady object after the scene is empty again is the other one.
            page.click("nav a[data-tab=add]")
            start = page.locator("#cap-start")
            start.locator("input[name=name]").fill(CAPTURED)
            start.locator("input[name=views]").fill("1")
            start.locator("button").click()
            expect(page.locator("#cap-session")).to_be_visible()
            expect(page.locator("#live-state")).to_contain_text("empty", timeout=15_000)
            expect(page.locator("#live-state")).to_contain_text("stable", timeout=15_000)
            page.click("#cap-take")
            expect(page.locator("#cap-views figure")).to_have_count(1)
            shot(page, "capture", full=True)
            page.click("#cap-finish")
            expect(page.locator("#message")).to_contain_text(f"Saved {CAPTURED} with 1 views")

            # The running matcher has it at once: its next placement is recognised.
            page.click("nav a[data-tab=live]")
            expect(recognised(page, CAPTURED).first).to_be_visible(timeout=30_000)

            page.click("nav a[data-tab=products]")
            expect(page.locator("#products-table tbody tr")).to_have_count(2)
            shot(page, "products")
            page.click("nav a[data-tab=events]")
            expect(page.locator("#events-table tbody tr").first).to_be_visible()
            expect(page.locator("#events-table tbody")).to_contain_text(UPLOADED)
            shot(page, "events")
            page.click("nav a[data-tab=status]")
            expect(page.locator("#status-table")).to_contain_text("threshold")
            shot(page, "status")
        finally:
            browser.close()
