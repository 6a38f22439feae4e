"""The web server's thread inside `run`: started and stopped with it, refusing a network-wide
address without a password, carrying on (logged) when the port is taken."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from device import cli
from device.app import DeviceApp
from device.web.runner import serve_web
from device.web.server import WebServer, WebServerError

from ..device.fakes import FakeEmbedder
from .conftest import PASSWORD_HASH, web_config


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _app(cfg) -> DeviceApp:
    return DeviceApp(cfg, embedder_factory=lambda path, n: FakeEmbedder(), out=io.StringIO())


def test_server_thread_serves_and_stops(tmp_path: Path) -> None:
    cfg = web_config(tmp_path)
    with _app(cfg) as app:
        server = WebServer(app, cfg, PASSWORD_HASH, port=0)
        with server:
            assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
            status, body = _get(f"{server.url}/healthz")
            assert status == 503 and json.loads(body)["ok"] is False  # no loop, no frames
            status, body = _get(f"{server.url}/")
            assert status == 200 and b"<title>prodrec</title>" in body
            assert _get(f"{server.url}/api/products")[0] == 401
            # No request path reaches the file system.
            for path in ("/static/../app.py", "/static/%2e%2e%2fapp.py", "/static/routes.py"):
                assert _get(f"{server.url}{path}")[0] == 404, path
        assert not server._thread.is_alive()
        server.close()  # idempotent
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_taken_port_is_logged_and_recognition_goes_on(tmp_path: Path, caplog) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg = web_config(tmp_path, port=port)
        with _app(cfg) as app:
            with pytest.raises(WebServerError, match="another program uses the port"):
                WebServer(app, cfg, None)
            with caplog.at_level(logging.ERROR), serve_web(app, cfg, None) as server:
                assert server is None
            assert "web page is not served" in caplog.text
    with _app(cfg.replace("web", enabled=False)) as app, serve_web(app, app.config, None) as s:
        assert s is None


def test_run_refuses_a_network_address_without_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(cli, "embedder_factory", lambda path, n: FakeEmbedder())
    config = tmp_path / "config.toml"
    config.write_text(
        f'[gallery]\npath = "{tmp_path / "g.db"}"\n[web]\nhost = "0.0.0.0"\nport = 18080\n',
        encoding="utf-8",
    )
    code = cli.main(["run", "--config", str(config), "--source", str(tmp_path / "none")])
    assert code == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "no web password is set" in err and "set-password" in err
    assert not (tmp_path / "g.db").exists()  # refused before anything was opened
    # With a password set, the same configuration gets past that check.
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert cli.main(["web", "set-password", "--password-stdin", "--config", str(config)]) == 0
    assert (tmp_path / "web-password").read_text().startswith("scrypt$")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["web", "set-password", "--password-stdin", "--config", str(config)]) == 2
