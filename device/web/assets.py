"""The page's static files (device/web/static), read once into memory: a request names one of
them, it never reaches the file system."""

from __future__ import annotations

import functools
from importlib import resources

from starlette.responses import JSONResponse, Response

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@functools.cache
def files() -> dict[str, bytes]:
    folder = resources.files("device.web") / "static"
    return {
        item.name: item.read_bytes()
        for item in folder.iterdir()
        if item.is_file() and any(item.name.endswith(ext) for ext in TYPES)
    }


def response(name: str) -> Response:
    data = files().get(name)
    if data is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    media = TYPES[name[name.rfind(".") :]]
    return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})
