"""Starting the web server beside `run`'s frame loop (no web framework imported until needed).

`check_web(config)` runs before the model loads: a server that would listen beyond this machine
without a password stops the start (exit 2, with the command that fixes it). `serve_web(...)` then
starts it; a missing web framework or a busy port is logged as an error and recognition goes on
without the page: the camera loop is what the device is for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..config import Config
from .password import check_bind_allowed

logger = logging.getLogger(__name__)


def check_web(config: Config) -> str | None:
    """The password hash the server will require (None: none set, local only). ValueError when
    [web] host is beyond localhost and no password is set."""
    if not config.web.enabled:
        return None
    return check_bind_allowed(config)


@contextlib.contextmanager
def serve_web(app: Any, config: Config, password_hash: str | None) -> Iterator[Any]:
    """The running WebServer (or None when disabled or it could not start) for the `with` body."""
    if not config.web.enabled:
        yield None
        return
    try:
        from .server import WebServer, WebServerError
    except ImportError as exc:
        logger.error(
            "the web page is not served: %s. Install the device's requirements (starlette, "
            "uvicorn, python-multipart), or set [web] enabled = false",
            exc,
        )
        yield None
        return
    try:
        server = WebServer(app, config, password_hash)
    except WebServerError as exc:
        logger.error("the web page is not served: %s", exc)
        yield None
        return
    with server:
        yield server
