"""The API's OpenAPI 3 description, built from the routes themselves (path, method, the
handler's docstring), so it cannot forget an operation."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import BaseRoute, Route

PUBLIC = {"/", "/static/{name}", "/healthz", "/api/openapi.json", "/api/session", "/api/login"}
_PARAM = re.compile(r"{(\w+)(?::(\w+))?}")


def build_openapi(routes: list[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        path = _PARAM.sub(r"{\1}", route.path)
        doc = (route.endpoint.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if kind == "int" else "string"},
            }
            for name, kind in _PARAM.findall(route.path)
        ]
        for method in sorted(route.methods - {"HEAD"}):
            op: dict[str, Any] = {
                "summary": summary.rstrip("."),
                "description": " ".join((summary + " " + rest).split()),
                "operationId": f"{method.lower()}_{route.name}",
                "responses": {"200": {"description": "OK"}},
            }
            if params:
                op["parameters"] = params
            if route.path in PUBLIC:
                op["security"] = []
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "prodrec device API",
            "version": "1",
            "description": (
                "JSON API of `python -m device run`. With a password set, log in with POST "
                "/api/login and send either the session cookie plus the X-CSRF-Token header on "
                "every change, or `Authorization: Bearer <token>`."
            ),
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "prodrec_session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        },
        "security": [{"session": []}, {"bearer": []}],
        "paths": paths,
    }
