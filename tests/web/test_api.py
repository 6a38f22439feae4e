"""The JSON API through Starlette's TestClient: every operation, authentication and CSRF, upload
limits. The device behind it is a real DeviceApp with the stand-in embedder."""

from __future__ import annotations

import csv
import io
import re
import time

import numpy as np
from starlette.routing import Route

from device.web.routes import Api
from device.web.security import SESSION_COOKIE

from .conftest import PASSWORD, Web, jpeg, photos_of

BOX = (220, 140, 200, 200)


def _routes(web: Web) -> list[tuple[str, str]]:
    """(method, concrete path) of every guarded route."""
    out = []
    for route in Api(web.ctx).routes():
        assert isinstance(route, Route)
        if not route.path.startswith("/api/") or route.path in (
            "/api/session",
            "/api/login",
            "/api/openapi.json",
        ):
            continue
        path = re.sub(r"{\w+:int}", "1", route.path)
        path = re.sub(r"{\w+}", "abc", path)
        for method in route.methods or ():
            if method != "HEAD":
                out.append((method, path))
    return out


def _upload(web: Web, name: str, images: list[np.ndarray], **fields: str):
    files = [("photos", (f"p{i}.jpg", jpeg(im), "image/jpeg")) for i, im in enumerate(images)]
    return web.client.post(
        "/api/products", data={"name": name, **fields}, files=files, headers=web.headers
    )


def test_every_api_route_needs_a_login_and_every_change_a_csrf_token(web: Web) -> None:
    routes = _routes(web)
    assert len(routes) >= 20
    for method, path in routes:
        r = web.client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert "log in" in r.json()["error"]
    # Public: the page, health, session, the API description.
    for path in ("/", "/static/app.js", "/api/session", "/api/openapi.json"):
        assert web.client.get(path).status_code == 200, path
    assert web.client.get("/healthz").status_code == 503  # no loop running: no frames
    web.login()
    for method, path in routes:
        if method in ("GET",):
            continue
        r = web.client.request(method, path)  # the cookie, but no X-CSRF-Token
        assert r.status_code == 403, (method, path, r.status_code)
        assert "CSRF" in r.json()["error"]
        r = web.client.request(method, path, headers={"X-CSRF-Token": "forged"})
        assert r.status_code == 403, (method, path)


def test_login_cookie_bearer_logout_and_rate_limit(web: Web) -> None:
    s = web.client.get("/api/session").json()
    assert s["auth_required"] and not s["logged_in"] and s["csrf"] is None
    r = web.client.post("/api/login", json={"password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    body = r.json()
    s = web.client.get("/api/session").json()
    assert s["logged_in"] and s["csrf"] == body["csrf"]
    # A bearer token works without the cookie and needs no CSRF token.
    web.client.cookies.clear()
    bearer = {"Authorization": f"Bearer {body['token']}"}
    assert web.client.get("/api/products", headers=bearer).json() == []
    r = web.client.post("/api/enroll", json={"name": "x"}, headers=bearer)
    assert r.status_code == 503 and "live loop" in r.json()["error"]  # past auth: no loop
    assert web.client.post("/api/logout", headers=bearer).status_code == 200
    assert web.client.get("/api/products", headers=bearer).status_code == 401
    # Wrong passwords: 401, then 429 once [web] login_attempts (5) are used up.
    for _ in range(5):
        assert web.client.post("/api/login", json={"password": "guess1234"}).status_code == 401
    r = web.client.post("/api/login", json={"password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert web.client.post("/api/login", content=b"not json").status_code in (400, 429)


def test_without_a_password_only_local_pages_and_csrf(open_web: Web) -> None:
    web = open_web
    s = web.client.get("/api/session").json()
    assert not s["auth_required"] and s["logged_in"] and s["csrf"]
    assert web.client.get("/api/products").status_code == 200
    r = web.client.patch("/api/products/1", json={"code": "1"})
    assert r.status_code == 403  # no CSRF token
    r = web.client.patch("/api/products/1", json={"code": "1"}, headers={"X-CSRF-Token": s["csrf"]})
    assert r.status_code == 404  # past the checks: there is no product 1
    # DNS rebinding: a foreign host name pointing at 127.0.0.1 is refused.
    r = web.client.get("/api/products", headers={"Host": "evil.example:8080"})
    assert r.status_code == 403
    assert web.client.post("/api/login", json={"password": "whatever1"}).status_code == 400


def test_products_from_uploaded_photos(web: Web) -> None:
    web.headers = {"X-CSRF-Token": web.login()["csrf"]}
    r = _upload(web, "Oat milk", photos_of("Oatly-Oat-Milk", 3), code="7394376616037")
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["product"]["name"] == "Oat milk" and res["views_added"] == 3
    assert _upload(web, "Oat milk", photos_of("Oatly-Oat-Milk", 1)).status_code == 409
    _upload(web, "Banana", photos_of("Banana", 2))
    items = web.client.get("/api/products").json()
    assert [p["name"] for p in items] == ["Banana", "Oat milk"] or [p["name"] for p in items] == [
        "Oat milk",
        "Banana",
    ]
    oat = next(p for p in items if p["name"] == "Oat milk")
    assert oat["code"] == "7394376616037" and oat["n_views"] == 3
    thumb = web.client.get(oat["thumb_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    detail = web.client.get(f"/api/products/{oat['id']}").json()
    assert len(detail["views"]) == 3
    crop = web.client.get(detail["views"][0]["crop_url"])
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"
    # Rename and set the code.
    r = web.client.patch(
        f"/api/products/{oat['id']}", json={"name": "Oatly", "code": "1"}, headers=web.headers
    )
    assert r.status_code == 200 and (r.json()["name"], r.json()["code"]) == ("Oatly", "1")
    r = web.client.patch(f"/api/products/{oat['id']}", json={"name": "Banana"}, headers=web.headers)
    assert r.status_code == 409
    # Look-alikes.
    check = web.client.get("/api/products/check").json()
    assert check["threshold"] == 0.8 and {c["name"] for c in check["products"]} == {
        "Oatly",
        "Banana",
    }
    assert all("flags" in c and "nearest" in c for c in check["products"])
    # Delete a view, then the product: both need a confirmation.
    view_id = detail["views"][0]["id"]
    assert web.client.delete(f"/api/views/{view_id}", headers=web.headers).status_code == 400
    r = web.client.delete(f"/api/views/{view_id}?confirm=yes", headers=web.headers)
    assert r.status_code == 200
    assert web.client.get(f"/api/products/{oat['id']}").json()["n_views"] == 2
    r = web.client.delete(f"/api/products/{oat['id']}?confirm=Banana", headers=web.headers)
    assert r.status_code == 400
    r = web.client.delete(f"/api/products/{oat['id']}?confirm=Oatly", headers=web.headers)
    assert r.status_code == 200
    assert [p["name"] for p in web.client.get("/api/products").json()] == ["Banana"]
    assert web.client.get(f"/api/products/{oat['id']}").status_code == 404


def test_bad_uploads_are_refused(web: Web) -> None:
    web.headers = {"X-CSRF-Token": web.login()["csrf"]}
    good = jpeg(photos_of("Banana", 1)[0])

    def send(files: list, name: str = "X") -> tuple[int, str]:
        r = web.client.post("/api/products", data={"name": name}, files=files, headers=web.headers)
        return r.status_code, r.json()["error"]

    status, msg = send([("photos", ("notes.jpg", b"just some text, not a photo", "image/jpeg"))])
    assert status == 415 and "not an image" in msg
    big = good + b"\x00" * web.ctx.web.max_upload_bytes
    status, msg = send([("photos", ("big.jpg", big, "image/jpeg"))])
    assert status == 413 and "max_upload_bytes" in msg
    # A small PNG claiming 20000 x 20000 pixels: refused from its header, never decoded.
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + ihdr
        + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    )
    status, msg = send([("photos", ("bomb.png", png, "image/png"))])
    assert status == 413 and "max_upload_pixels" in msg
    too_many = [("photos", (f"{i}.jpg", good, "image/jpeg")) for i in range(21)]
    status, _ = send(too_many)
    assert status in (400, 413)
    status, msg = send([], name="X")
    assert status == 400
    assert web.client.get("/api/products").json() == []  # nothing stored by any of them


def test_status_export_import_and_openapi(web: Web) -> None:
    web.headers = {"X-CSRF-Token": web.login()["csrf"]}
    _upload(web, "Banana", photos_of("Banana", 2))
    status = web.client.get("/api/status").json()
    for key in ("model", "threshold", "threshold_source", "camera", "fps", "products", "uptime_s"):
        assert key in status, key
    assert status["products"] == 1 and status["db_bytes"] > 0 and status["free_disk_bytes"] > 0
    assert status["web"]["auth_required"] is True
    r = web.client.get("/api/gallery/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "attachment" in r.headers["content-disposition"] and r.content[:2] == b"PK"
    export = r.content
    files = {"file": ("products.zip", export, "application/zip")}
    r = web.client.post("/api/gallery/import", files=files, headers=web.headers)
    assert r.status_code == 200 and r.json()["skipped"] == ["Banana"]
    r = web.client.post(
        "/api/gallery/import", files=files, data={"replace": "true"}, headers=web.headers
    )
    assert r.status_code == 200 and r.json()["replaced"] == ["Banana"]
    bad = {"file": ("x.zip", b"PK not really", "application/zip")}
    assert web.client.post("/api/gallery/import", files=bad, headers=web.headers).status_code == 400
    spec = web.client.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for method, path in _routes(web):
        templ = next(p for p in spec["paths"] if re.fullmatch(re.sub(r"{\w+}", "[^/]+", p), path))
        assert method.lower() in spec["paths"][templ], (method, path)


def test_capture_enrollment_events_and_live_feeds(live_web: Web) -> None:
    web = live_web
    web.headers = {"X-CSRF-Token": web.login()["csrf"]}
    client, h = web.client, web.headers
    views = photos_of("Oatly-Oat-Milk", 3)
    web.wait_state("empty")
    assert web.ctx.encoder.encoded == 0  # nobody watched: nothing encoded
    live = client.get("/api/live.jpg")
    assert live.status_code == 200 and live.content[:2] == b"\xff\xd8"
    assert int(live.headers["x-frame-number"]) > 0 and web.ctx.encoder.encoded == 1
    assert client.get("/healthz").json()["ok"] is True

    r = client.post("/api/enroll", json={"name": "Oatly", "code": "42", "views": 2}, headers=h)
    assert r.status_code == 201, r.text
    sid = r.json()["session"]
    assert client.post(f"/api/enroll/{sid}/capture", headers=h).status_code == 400  # nothing there
    web.place(views[0], BOX)
    web.wait_state("stable")
    r = client.post(f"/api/enroll/{sid}/capture", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["index"] == 1 and r.json()["crop"].startswith("data:image/jpeg;base64,")
    r = client.post(f"/api/enroll/{sid}/capture", headers=h)  # not turned: a near-duplicate
    assert r.status_code == 409 and "turn" in r.json()["error"]
    web.place(None, BOX)
    web.wait_state("empty")
    web.place(views[1], BOX)
    web.wait_state("stable")
    assert client.post(f"/api/enroll/{sid}/capture", headers=h).json()["index"] == 2
    web.place(None, BOX)
    web.wait_state("empty")
    r = client.post(f"/api/enroll/{sid}/finish", headers=h)
    assert r.status_code == 201 and (r.json()["name"], r.json()["n_views"]) == ("Oatly", 2)
    assert client.post(f"/api/enroll/{sid}/cancel", headers=h).status_code == 404
    sid2 = client.post("/api/enroll", json={"name": "Nothing"}, headers=h).json()["session"]
    assert client.post(f"/api/enroll/{sid2}/cancel", headers=h).status_code == 200
    assert [p["name"] for p in client.get("/api/products").json()] == ["Oatly"]

    # Recognised at once; pushed to the live page's event stream, listed in the events.
    got: list[str] = []
    with client.stream("GET", "/api/live/events") as stream:
        web.place(views[1], (300, 150, 200, 200))  # a view it was enrolled with
        for line in stream.iter_lines():
            if line.startswith("data: "):
                got.append(line[6:])
                web.ctx.stopping.set()  # ends the stream
                break
    import json

    pushed = json.loads(got[0])
    assert (pushed["label"], pushed["status"]) == ("Oatly", "known")
    crop = client.get(pushed["crop_url"])
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"
    assert client.get("/api/live/recent").json()[0]["id"] == pushed["id"]
    deadline = time.monotonic() + 30
    while not (events := client.get("/api/events").json()["events"]):
        assert time.monotonic() < deadline, "the event row was not written"
        time.sleep(0.05)
    assert events[0]["id"] == pushed["id"] and events[0]["label"] == "Oatly"
    assert "crop_file" not in events[0]
    assert client.get(f"/api/events/{pushed['id']}/crop.jpg").status_code == 200
    assert client.get("/api/events?status=unknown").json()["events"] == []
    assert len(client.get("/api/events?product=Oatly").json()["events"]) == 1
    assert client.get("/api/events?status=bogus").status_code == 400
    assert client.get("/api/events?limit=0").status_code == 400
    r = client.get("/api/events.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1 and rows[0]["label"] == "Oatly" and rows[0]["id"] == pushed["id"]


def test_saved_event_crops_are_served_by_event_id_only(tmp_path) -> None:
    from device.web.crops import CropFiles

    folder = tmp_path / "crops"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8crop")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    crops = CropFiles(str(folder), keep=2)
    crops.remember("e1", str(folder / "a.jpg"))
    crops.remember("e2", str(tmp_path / "secret.jpg"))  # outside the crop folder
    crops.remember("e3", str(folder / ".." / "secret.jpg"))
    assert crops.read("e2") is None and crops.read("e3") is None
    assert crops.read("e1") is None  # only the last 2 are remembered
    crops.remember("e1", str(folder / "a.jpg"))
    assert crops.read("e1") == b"\xff\xd8crop"
    assert crops.read("nope") is None
    assert CropFiles("").read("e1") is None


def test_an_abandoned_camera_enrollment_is_cancelled(tmp_path) -> None:
    from .conftest import _web

    # [enroll] timeout_s 0.2: a page silent for 3 x 0.2 s has gone away.
    gen = _web(tmp_path, password=None, loop=True)
    web = next(gen)
    try:
        web.ctx.config = web.ctx.config.replace("enroll", timeout_s=0.2)
        csrf = web.client.get("/api/session").json()["csrf"]
        h = {"X-CSRF-Token": csrf}
        web.wait_state("empty")
        assert web.client.post("/api/enroll", json={"name": "A"}, headers=h).status_code == 201
        r = web.client.post("/api/enroll", json={"name": "B"}, headers=h)
        assert r.status_code == 400 and "in progress" in r.json()["error"]
        deadline = time.monotonic() + 20
        while web.client.post("/api/enroll", json={"name": "B"}, headers=h).status_code != 201:
            assert time.monotonic() < deadline, "the idle enrollment was never cancelled"
            time.sleep(0.2)
    finally:
        gen.close()
