"""[[webhook]] against a real HTTP receiver (http.server on loopback, in a thread)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.config import Config, WebhookConfig
from device.gallery import Gallery
from device.outputs import Outputs, RejectedError, WebhookOutput
from device.outputs.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER

from .brokers import WebhookReceiver, free_port, port_open, wait_for
from .test_outbox import event, write


def config_for(url: str, secret: str = "") -> Config:
    cfg = Config().replace("outbox", retry_initial_s=0.01, retry_max_s=0.05)
    return Config(outbox=cfg.outbox, webhook=(WebhookConfig(url=url, secret=secret, timeout_s=2),))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def test_signature_verifies(tmp_path: Path, receiver: WebhookReceiver) -> None:
    db = tmp_path / "g.db"
    secret = "s3cret"
    with Gallery(db) as gallery, Outputs(config_for(receiver.url, secret), db) as outputs:
        outputs.start()
        ev = event(1)
        write(gallery, outputs, ev)
        wait_for(receiver.accepted, what="the delivery")
    (code, headers, body), *_ = receiver.requests
    assert code == 200
    # What a receiver does: HMAC-SHA256 of the raw body with the shared secret.
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert json.loads(body) == ev and headers[EVENT_ID_HEADER] == ev["id"]
    # The signature is over these bytes: another body does not verify.
    forged = hmac.new(secret.encode(), body + b" ", hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] != "sha256=" + forged


def test_500_then_200_gives_one_delivery(tmp_path: Path, receiver: WebhookReceiver) -> None:
    receiver.replies = [500, 200]
    db = tmp_path / "g.db"
    with Gallery(db) as gallery, Outputs(config_for(receiver.url), db) as outputs:
        outputs.start()
        ev = event(1)
        write(gallery, outputs, ev)
        name = f"webhook {receiver.url}"
        wait_for(lambda: outputs.stats()[name]["delivered"] == 1, what="the delivery")
        assert outputs.stats()[name]["failed"] == 1
    assert [code for code, _, _ in receiver.requests] == [500, 200]
    assert [json.loads(b)["id"] for b in receiver.accepted()] == [ev["id"]]


def test_4xx_not_retried_and_logged_with_the_reply(
    tmp_path: Path, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.replies = [404, 200]
    db = tmp_path / "g.db"
    caplog.set_level(logging.ERROR)
    with Gallery(db) as gallery, Outputs(config_for(receiver.url), db) as outputs:
        outputs.start()
        write(gallery, outputs, event(1))
        second = event(2)
        write(gallery, outputs, second)  # the next event is not held up by the refused one
        wait_for(receiver.accepted, what="the second event")
        stats = outputs.stats()[f"webhook {receiver.url}"]
        assert stats["rejected"] == 1 and stats["failed"] == 0
    assert [code for code, _, _ in receiver.requests] == [404, 200]
    assert json.loads(receiver.accepted()[0])["id"] == second["id"]
    assert "HTTP 404" in caplog.text and "no thanks (404)" in caplog.text


def test_restart_with_a_backlog_delivers_it(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    port = free_port()  # nothing listens there yet: the receiver is down
    url = f"http://127.0.0.1:{port}/hook"
    evs = [event(i) for i in range(3)]
    with Gallery(db) as gallery:
        with Outputs(config_for(url), db) as outputs:
            outputs.start()  # starts although the receiver is unreachable
            for ev in evs:
                write(gallery, outputs, ev)
            wait_for(lambda: outputs.stats()[f"webhook {url}"]["failed"] >= 1, what="a failure")
        receiver = WebhookReceiver(port=port)
        try:
            with Outputs(config_for(url), db) as outputs:  # the service restarted
                outputs.start()
                wait_for(lambda: len(receiver.accepted()) == 3, what="the backlog")
                wait_for(lambda: outputs.stats()[f"webhook {url}"]["backlog"] == 0, what="marks")
        finally:
            receiver.close()
    assert [json.loads(b)["id"] for b in receiver.accepted()] == [e["id"] for e in evs]


def test_url_credentials_stay_out_of_the_status() -> None:
    out = WebhookOutput(WebhookConfig(url="https://user:pw@example.org/hook", secret="x"))
    assert "pw" not in out.describe() and "example.org/hook" in out.describe()


def readme_receiver() -> str:
    """The minimal webhook receiver README.md's "Integrations" shows."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after = text.split("A minimal receiver that checks the signature", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_receiver_checks_the_signature(tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(readme_receiver())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), "change me"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: port_open(port), what="the README's receiver")
        url = f"http://127.0.0.1:{port}/prodrec"
        ev = event(1)
        good = WebhookOutput(WebhookConfig(url=url, secret="change me"))
        assert good.send(ev, None) == "HTTP 204"
        assert proc.stdout is not None
        assert proc.stdout.readline().split()[:3] == [ev["id"], ev["label"], ev["status"]]
        with pytest.raises(RejectedError, match="HTTP 401"):
            WebhookOutput(WebhookConfig(url=url, secret="wrong")).send(ev, None)
    finally:
        proc.kill()
        proc.wait(5)
