"""The HTTP API (JSON under /api/) and the page, as a Starlette application.

Every handler runs on the web server's asyncio loop; whatever may block (database, image
decoding, JPEG encoding, waiting for a command the frame loop runs) goes to a worker thread
(`run_in_threadpool`) or is awaited as a Future, so one slow request never holds the others and
no request ever waits inside the frame loop.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..commands import CancelEnroll, CaptureView, FinishEnroll, StartEnroll
from ..enroll import photo_side
from ..errors import (
    DeviceError,
    LoopNotRunningError,
    NearDuplicateView,
    ProductExists,
    ProductNotFound,
)
from ..events import CSV_FIELDS
from . import assets
from .context import Denied, WebContext
from .jsonable import jsonable
from .password import verify_password
from .security import SESSION_COOKIE
from .uploads import UploadError, check_photo

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
STATUSES = ("known", "unknown", "ambiguous")
# A camera enrollment started here with no request for this many times [enroll] timeout_s is
# cancelled (the page was closed).
ENROLL_IDLE_FACTOR = 3.0
# A frame older than this means the loop is stuck or the camera failing: /healthz says so.
HEALTHY_FRAME_AGE_S = 10.0


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def _text(
    body: dict[str, Any], key: str, *, required: bool = False, limit: int = 200
) -> str | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            raise ValueError(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    value = value.strip()
    if required and not value:
        raise ValueError(f"{key!r} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{key!r} is longer than {limit} characters")
    return value


class Api:
    """The handlers; `routes()` lists them with their paths and whether they need a login."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.app = ctx.app

    # --- plumbing --------------------------------------------------------------------------------

    def guarded(self, handler: Handler) -> Handler:
        """The handler behind the access check (login, CSRF, Host) and the error mapping."""
        return self.public(handler, guard=True)

    def public(self, handler: Handler, *, guard: bool = False) -> Handler:
        """The handler with the device's exceptions answered as JSON errors."""

        async def wrapper(request: Request) -> Response:
            try:
                if guard:
                    request.state.session = self.ctx.check(
                        request.method, request.headers, dict(request.cookies)
                    )
                return await handler(request)
            except Denied as exc:
                return error(exc.status, str(exc))
            except Exception as exc:  # every failure becomes an answer saying what went wrong
                return on_error(request, exc)

        wrapper.__doc__ = handler.__doc__
        wrapper.__name__ = handler.__name__
        return wrapper

    def routes(self) -> list[BaseRoute]:
        g, p = self.guarded, self.public
        public = [
            Route("/", p(self.page), methods=["GET"]),
            Route("/static/{name}", p(self.static), methods=["GET"]),
            Route("/healthz", p(self.healthz), methods=["GET"]),
            Route("/api/openapi.json", p(self.openapi), methods=["GET"]),
            Route("/api/session", p(self.session), methods=["GET"]),
            Route("/api/login", p(self.login), methods=["POST"]),
        ]
        guarded = [
            Route("/api/logout", g(self.logout), methods=["POST"]),
            Route("/api/live.jpg", g(self.live_jpg), methods=["GET"]),
            Route("/api/live/events", g(self.live_events), methods=["GET"]),
            Route("/api/live/recent", g(self.live_recent), methods=["GET"]),
            Route("/api/live/crops/{event_id}.jpg", g(self.live_crop), methods=["GET"]),
            Route("/api/products", g(self.products), methods=["GET"]),
            Route("/api/products", g(self.add_product), methods=["POST"]),
            Route("/api/products/check", g(self.check), methods=["GET"]),
            Route("/api/products/{product_id:int}", g(self.product), methods=["GET"]),
            Route("/api/products/{product_id:int}", g(self.change_product), methods=["PATCH"]),
            Route("/api/products/{product_id:int}", g(self.delete_product), methods=["DELETE"]),
            Route("/api/products/{product_id:int}/thumb.jpg", g(self.thumb), methods=["GET"]),
            Route("/api/views/{view_id:int}/crop.jpg", g(self.view_crop), methods=["GET"]),
            Route("/api/views/{view_id:int}", g(self.delete_view), methods=["DELETE"]),
            Route("/api/enroll", g(self.enroll_start), methods=["POST"]),
            Route("/api/enroll/{session_id}/capture", g(self.enroll_capture), methods=["POST"]),
            Route("/api/enroll/{session_id}/finish", g(self.enroll_finish), methods=["POST"]),
            Route("/api/enroll/{session_id}/cancel", g(self.enroll_cancel), methods=["POST"]),
            Route("/api/events", g(self.events), methods=["GET"]),
            Route("/api/events.csv", g(self.events_csv), methods=["GET"]),
            Route("/api/events/{event_id}/crop.jpg", g(self.event_crop), methods=["GET"]),
            Route("/api/status", g(self.status), methods=["GET"]),
            Route("/api/gallery/export", g(self.export), methods=["GET"]),
            Route("/api/gallery/import", g(self.import_), methods=["POST"]),
        ]
        return public + guarded

    async def _command(self, command: Any, timeout_s: float) -> Any:
        """Run a command on the frame loop's thread and wait for its result without blocking."""
        fut = self.app.submit(command)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"the live loop did not answer within {timeout_s:.0f} s (is the camera running?)"
            ) from None

    # --- page, health, session -------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The web page."""
        return assets.response("index.html")

    async def static(self, request: Request) -> Response:
        """The page's script and style sheet (served from memory, never from a path)."""
        return assets.response(request.path_params["name"])

    async def healthz(self, request: Request) -> Response:
        """Liveness without authentication: 200 while the loop delivers frames, 503 otherwise."""
        snap = self.app.hub.latest()
        age = None if snap is None else round(time.monotonic() - snap.time, 2)
        ok = age is not None and age <= HEALTHY_FRAME_AGE_S
        body = {"ok": ok, "frame": None if snap is None else snap.number, "frame_age_s": age}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def openapi(self, request: Request) -> Response:
        """This API's OpenAPI 3 description."""
        from .openapi import build_openapi

        return JSONResponse(build_openapi(self.routes()))

    async def session(self, request: Request) -> Response:
        """Whether a login is needed, whether this client has one, and its CSRF token."""
        ctx = self.ctx
        session, _ = ctx.session_of(request.headers, dict(request.cookies))
        csrf = (session.csrf if session else None) if ctx.auth_required else ctx.local_csrf
        return JSONResponse(
            {
                "auth_required": ctx.auth_required,
                "logged_in": session is not None or not ctx.auth_required,
                "csrf": csrf,
                "live_fps": ctx.web.live_fps,
                "views": ctx.config.enroll.views,
                "max_upload_files": ctx.web.max_upload_files,
                "max_upload_bytes": ctx.web.max_upload_bytes,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def login(self, request: Request) -> Response:
        """Log in with the password: sets the session cookie; returns the CSRF token and a bearer
        token for API clients."""
        ctx = self.ctx
        if not ctx.auth_required:
            return error(400, "no password is set: this page needs no login")
        client = request.client.host if request.client else "?"
        wait = ctx.limiter.retry_after(client)
        if wait > 0:
            return JSONResponse(
                {"error": f"too many failed logins: try again in {wait:.0f} s"},
                status_code=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        body = await _json_body(request)
        password = body.get("password")
        if not isinstance(password, str) or len(password) > 1024:
            return error(400, 'give the password as {"password": "..."}')
        assert ctx.password_hash is not None
        if not await run_in_threadpool(verify_password, password, ctx.password_hash):
            ctx.limiter.failed(client)
            logger.warning("failed web login from %s", client)
            return error(401, "wrong password")
        ctx.limiter.succeeded(client)
        s = ctx.sessions.create()
        resp = JSONResponse(
            {"csrf": s.csrf, "token": s.token, "expires_in_s": int(ctx.sessions.lifetime_s)}
        )
        resp.set_cookie(
            SESSION_COOKIE,
            s.token,
            max_age=int(ctx.sessions.lifetime_s),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        """End this session."""
        session = request.state.session
        if session is not None:
            self.ctx.sessions.drop(session.token)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    # --- live ------------------------------------------------------------------------------------

    async def live_jpg(self, request: Request) -> Response:
        """The newest camera frame as JPEG, region of interest and detection box drawn (encoded
        only when asked for; the page asks [web] live_fps times a second while visible)."""
        frame = await run_in_threadpool(self.ctx.encoder.latest)
        if frame is None:
            return error(503, "no camera frame yet")
        return Response(
            frame.jpeg,
            media_type="image/jpeg",
            headers={
                "Cache-Control": "no-store",
                "X-Frame-Number": str(frame.number),
                "X-Placement-State": frame.state,
            },
        )

    async def live_events(self, request: Request) -> Response:
        """The recognitions as they happen (Server-Sent Events, event type "recognition")."""
        ctx = self.ctx

        async def stream() -> AsyncIterator[str]:
            q = ctx.feed.listen()
            try:
                yield "retry: 2000\n\n"
                quiet = 0.0
                while not ctx.stopping.is_set():
                    try:
                        item = await asyncio.wait_for(q.get(), timeout=0.5)
                    except asyncio.TimeoutError:
                        quiet += 0.5
                        if quiet >= 15:  # keeps proxies from closing an idle stream
                            quiet = 0.0
                            yield ": keep-alive\n\n"
                        continue
                    quiet = 0.0
                    yield f"event: recognition\ndata: {json.dumps(item)}\n\n"
            finally:
                ctx.feed.unlisten(q)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def live_recent(self, request: Request) -> Response:
        """The last recognitions since the service started, newest first, with crop URLs."""
        return JSONResponse(self.ctx.feed.recent())

    async def live_crop(self, request: Request) -> Response:
        """A recent recognition's crop (kept in memory for the last 50)."""
        jpeg = self.ctx.feed.crop(request.path_params["event_id"])
        if jpeg is None:
            return error(404, "no such recent recognition")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    # --- products --------------------------------------------------------------------------------

    def _product_json(self, p: Any) -> dict[str, Any]:
        item = jsonable(p)
        item["thumb_url"] = f"/api/products/{p.id}/thumb.jpg" if p.n_views else None
        return item

    async def _product(self, request: Request) -> Any:
        return await run_in_threadpool(self.app.product, int(request.path_params["product_id"]))

    async def products(self, request: Request) -> Response:
        """The stored products (id, name, code, views, created) with thumbnail URLs."""
        items = await run_in_threadpool(self.app.products)
        return JSONResponse([self._product_json(p) for p in items])

    async def product(self, request: Request) -> Response:
        """One product with its views and their crop URLs."""
        p = await self._product(request)
        views = await run_in_threadpool(self.app.views, p.id)
        item = self._product_json(p)
        item["views"] = [{**jsonable(v), "crop_url": f"/api/views/{v.id}/crop.jpg"} for v in views]
        return JSONResponse(item)

    async def thumb(self, request: Request) -> Response:
        """A product's first stored view crop (JPEG)."""
        p = await self._product(request)
        views = await run_in_threadpool(self.app.views, p.id)
        if not views:
            return error(404, f"{p.name!r} has no views")
        jpeg = await run_in_threadpool(self.app.view_crop_jpeg, views[0].id)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    async def view_crop(self, request: Request) -> Response:
        """A stored view's crop (JPEG)."""
        jpeg = await run_in_threadpool(self.app.view_crop_jpeg, request.path_params["view_id"])
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    async def change_product(self, request: Request) -> Response:
        """Rename a product and/or set its code: {"name": "...", "code": "..."} ("" clears it)."""
        body = await _json_body(request)
        p = await self._product(request)
        name = _text(body, "name")
        if "code" in body:
            code = _text(body, "code", limit=64)
            await run_in_threadpool(self.app.set_code, p.name, code)
        if name is not None and name != p.name:
            await run_in_threadpool(self.app.rename, p.name, name)
        p = await self._product(request)
        return JSONResponse(self._product_json(p))

    async def delete_product(self, request: Request) -> Response:
        """Delete a product and all its views; needs ?confirm=<its name>."""
        p = await self._product(request)
        if request.query_params.get("confirm") != p.name:
            return error(400, f"to delete {p.name!r}, repeat its name: ?confirm=<name>")
        await run_in_threadpool(self.app.delete_product, p.name)
        return JSONResponse({"deleted": p.name})

    async def delete_view(self, request: Request) -> Response:
        """Delete one stored view; needs ?confirm=yes."""
        if request.query_params.get("confirm") != "yes":
            return error(400, "to delete a view, confirm it: ?confirm=yes")
        await run_in_threadpool(self.app.delete_view, request.path_params["view_id"])
        return JSONResponse({"deleted": request.path_params["view_id"]})

    async def check(self, request: Request) -> Response:
        """`products check`: each product's nearest look-alike, own-view agreement, flags."""
        report = await run_in_threadpool(self.app.check)
        products = [{**jsonable(c), "flags": c.flags(report.threshold)} for c in report.checks]
        return JSONResponse(
            {
                "threshold": report.threshold,
                "threshold_source": report.threshold_source,
                "reject_all": report.reject_all,
                "products": products,
            }
        )

    async def add_product(self, request: Request) -> Response:
        """Add a product from photos (multipart: name, code, append, photos[]), checked like
        `enroll --from-images`; stored whole or not at all."""
        web = self.ctx.web
        limit = web.max_upload_files * web.max_upload_bytes + 1_000_000
        _check_length(request, limit)
        form = await request.form(max_files=web.max_upload_files, max_fields=20)
        try:
            name = _text(dict(form), "name", required=True)
            code = _text(dict(form), "code", limit=64)
            append = str(form.get("append", "")).lower() in ("1", "true", "on", "yes")
            files = [f for f in form.getlist("photos") if isinstance(f, UploadFile)]
            if not files:
                raise ValueError("send at least one photo (field 'photos')")
            images = []
            side = photo_side(self.app.embedder, self.ctx.config)
            for i, f in enumerate(files):
                data = await f.read(web.max_upload_bytes + 1)
                label = f"photo {i + 1} ({f.filename or 'unnamed'})"
                images.append(
                    await run_in_threadpool(
                        check_photo,
                        data,
                        label,
                        max_bytes=web.max_upload_bytes,
                        max_pixels=web.max_upload_pixels,
                        max_side=side,
                    )
                )
        finally:
            await form.close()
        assert name is not None
        result = await run_in_threadpool(
            lambda: self.app.enroll_images(name, images, code, append=append)
        )
        return JSONResponse(jsonable(result), status_code=201)

    # --- enrollment from the live camera ---------------------------------------------------------

    async def enroll_start(self, request: Request) -> Response:
        """Start adding a product from the camera: {"name", "code"?, "views"?, "append"?}."""
        body = await _json_body(request)
        name = _text(body, "name", required=True)
        code = _text(body, "code", limit=64)
        views = body.get("views", self.ctx.config.enroll.views)
        if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= 64:
            raise ValueError("'views' must be a whole number in 1..64")
        append = bool(body.get("append", False))
        assert name is not None
        sid = await self._command(StartEnroll(name, code, views, append), 10.0)
        self._touch(sid)
        return JSONResponse({"session": sid, "views": views}, status_code=201)

    def _touch(self, sid: str) -> None:
        """Note activity on an enrollment this server started; start the reaper if needed."""
        ctx = self.ctx
        ctx.enrolls[sid] = time.monotonic()
        if ctx.reaper is None or ctx.reaper.done():
            ctx.reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Cancel enrollments left idle (a closed page): while one is open the loop recognises
        nothing and no other enrollment can start."""
        ctx = self.ctx
        idle_s = ENROLL_IDLE_FACTOR * ctx.config.enroll.timeout_s
        while ctx.enrolls and not ctx.stopping.is_set():
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = time.monotonic()
            for sid, last in list(ctx.enrolls.items()):
                if now - last <= idle_s:
                    continue
                ctx.enrolls.pop(sid, None)
                logger.warning(
                    "enrollment %s left idle for %.0f s: cancelled (nothing stored)", sid, idle_s
                )
                try:
                    await self._command(CancelEnroll(sid), 10.0)
                except Exception as exc:  # already finished, or the loop stopped
                    logger.debug("cancelling the idle enrollment %s: %s", sid, exc)

    async def enroll_capture(self, request: Request) -> Response:
        """Take the product now steady in view as the next view (409 when it is a near-duplicate
        of a view already taken: turn it more)."""
        sid = request.path_params["session_id"]
        if sid in self.ctx.enrolls:
            self._touch(sid)
        info = await self._command(CaptureView(sid), 15.0)
        crop = base64.b64encode(info.crop_jpeg).decode("ascii")
        return JSONResponse(
            {
                "index": info.index,
                "of": info.of,
                "box": list(info.box),
                "crop": f"data:image/jpeg;base64,{crop}",
            }
        )

    async def enroll_finish(self, request: Request) -> Response:
        """Store the product with every view taken (one transaction); the matcher has it at once."""
        sid = request.path_params["session_id"]
        product = await self._command(FinishEnroll(sid), 30.0)
        self.ctx.enrolls.pop(sid, None)
        return JSONResponse(self._product_json(product), status_code=201)

    async def enroll_cancel(self, request: Request) -> Response:
        """Give up an enrollment: nothing is stored."""
        sid = request.path_params["session_id"]
        self.ctx.enrolls.pop(sid, None)
        await self._command(CancelEnroll(sid), 10.0)
        return JSONResponse({"cancelled": request.path_params["session_id"]})

    # --- events ----------------------------------------------------------------------------------

    def _filters(self, request: Request) -> dict[str, Any]:
        product = request.query_params.get("product") or None
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        return {"product": product, "status": status}

    def _event_json(self, event: Any) -> dict[str, Any]:
        item = jsonable(event)
        item.pop("crop_file", None)  # a path on the device: the API gives a URL instead
        item["crop_url"] = None
        if event.crop_file:
            self.ctx.crop_files.remember(event.id, event.crop_file)
            item["crop_url"] = f"/api/events/{event.id}/crop.jpg"
        return item

    async def events(self, request: Request) -> Response:
        """Recognition events, newest first: ?limit (1..500, 50) &offset &product &status."""
        limit = _int_param(request, "limit", 50, 1, 500)
        offset = _int_param(request, "offset", 0, 0, 10_000_000)
        filters = self._filters(request)
        items = await run_in_threadpool(
            lambda: self.app.events(limit=limit, offset=offset, **filters)
        )
        items = items[::-1]  # DeviceApp gives them oldest first; the page lists newest first
        return JSONResponse(
            {"limit": limit, "offset": offset, "events": [self._event_json(e) for e in items]}
        )

    async def events_csv(self, request: Request) -> Response:
        """The events as CSV, newest first (?product &status &limit up to 100000)."""
        limit = _int_param(request, "limit", 10_000, 1, 100_000)
        filters = self._filters(request)
        items = await run_in_threadpool(lambda: self.app.events(limit=limit, offset=0, **filters))
        items = items[::-1]  # DeviceApp gives them oldest first
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_FIELDS)
        for e in items:
            d = jsonable(e)
            writer.writerow(
                [
                    " ".join(map(str, d[k])) if isinstance(d.get(k), list) else d.get(k)
                    for k in CSV_FIELDS
                ]
            )
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="prodrec-events-{stamp}.csv"'},
        )

    async def event_crop(self, request: Request) -> Response:
        """An event's crop (JPEG): a recent recognition's, or the crop saved with [service]
        save_crops of an event listed by GET /api/events."""
        event_id = request.path_params["event_id"]
        jpeg = self.ctx.feed.crop(event_id)
        if jpeg is None:
            jpeg = await run_in_threadpool(self.ctx.crop_files.read, event_id)
        if jpeg is None:
            return error(404, "no crop was saved for this event")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    # --- status, export, import ------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        """Model, threshold and its source, camera, fps, counts, uptime, database size, free
        disk, event outputs; and the web server's own figures."""
        status = await run_in_threadpool(self._device_status)
        status["web"] = {
            "host": self.ctx.web.host,
            "port": self.ctx.web.port,
            "auth_required": self.ctx.auth_required,
            "live_frames_encoded": self.ctx.encoder.encoded,
            "sessions": self.ctx.sessions.count(),
        }
        return JSONResponse(status)

    def _device_status(self) -> dict[str, Any]:
        """DeviceApp.status() plus the model's input size (on a worker thread: both may read the
        database or load the model)."""
        status = jsonable(self.app.status())
        spec = getattr(self.app.meta, "input", None)
        if isinstance(status.get("model"), dict) and spec is not None:
            status["model"]["input_size"] = f"{spec.width}x{spec.height}"
        return status

    async def export(self, request: Request) -> Response:
        """Download every product (views, crops, embeddings) as a `gallery export` zip file."""
        tmp = Path(tempfile.mkdtemp(prefix="prodrec-export-"))
        path = tmp / "products.zip"
        try:
            await run_in_threadpool(self.app.export_gallery, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return FileResponse(
            path,
            media_type="application/zip",
            filename=f"prodrec-products-{stamp}.zip",
            background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
        )

    async def import_(self, request: Request) -> Response:
        """Add the products of an export file (multipart: file, replace); checked whole first."""
        web = self.ctx.web
        _check_length(request, web.max_import_bytes + 1_000_000)
        form = await request.form(max_files=1, max_fields=5, max_part_size=web.max_import_bytes)
        tmp = Path(tempfile.mkdtemp(prefix="prodrec-import-"))
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ValueError("send the export file in the field 'file'")
            replace = str(form.get("replace", "")).lower() in ("1", "true", "on", "yes")
            path = tmp / "import.zip"
            size = 0
            with path.open("wb") as out:
                while chunk := await upload.read(1 << 20):
                    size += len(chunk)
                    if size > web.max_import_bytes:
                        raise UploadError(
                            f"the file is larger than {web.max_import_bytes:,} bytes "
                            "([web] max_import_bytes)",
                            413,
                        )
                    out.write(chunk)
            result = await run_in_threadpool(lambda: self.app.import_gallery(path, replace=replace))
        finally:
            await form.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return JSONResponse(jsonable(result))


def _check_length(request: Request, limit: int) -> None:
    raw = request.headers.get("content-length")
    if raw is not None and raw.isdigit() and int(raw) > limit:
        raise UploadError(f"the upload is larger than {limit:,} bytes", 413)


# --- errors -----------------------------------------------------------------------------------------


def on_error(request: Request, exc: Exception) -> Response:
    """Map the device's exceptions to HTTP answers whose message tells the user what to do."""
    if isinstance(exc, UploadError):
        return error(exc.status, str(exc))
    if isinstance(exc, HTTPException):  # e.g. the form parser's "Too many files"
        return error(exc.status_code, str(exc.detail))
    if isinstance(exc, ProductNotFound):
        return error(404, str(exc))
    if isinstance(exc, ProductExists):
        return error(409, str(exc))
    if isinstance(exc, NearDuplicateView):
        return error(409, str(exc))
    if isinstance(exc, LoopNotRunningError):
        return error(503, str(exc))
    if isinstance(exc, TimeoutError):
        return error(504, str(exc))
    if isinstance(exc, DeviceError):
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return error(503, str(exc))
    if isinstance(exc, KeyError):  # an unknown enrollment session
        return error(404, str(exc).strip("'\""))
    if isinstance(exc, ValueError):
        return error(400, str(exc))
    logger.exception("%s %s failed", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}")


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


# --- headers on every answer ------------------------------------------------------------------------

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (a plain ASGI middleware: streams untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, add_headers)


def build_app(ctx: WebContext) -> Starlette:
    from starlette.middleware import Middleware

    api = Api(ctx)
    return Starlette(
        routes=api.routes(),
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _on_http},
    )
