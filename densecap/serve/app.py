"""The HTTP API and the page: ``create_app(service)`` -> a FastAPI app.

    POST /v1/caption        multipart: image (file); optional boxes (JSON [[x, y, w, h], ...] in
                            original pixels: caption these instead of proposing regions),
                            max_regions (int, 0 = all), image_caption (bool), min_score (0..1)
                            -> one results.json entry (tools/infer.py's schema)
    POST /v1/search         {"query": "a red bus", "topk": 10, "mode": "fast" | "exact"}
                            -> {"hits": [{"image", "image_url", "box", "score", "caption", ...}], ...}
    GET  /v1/images/{name}  an indexed image (only indexed files inside the index's image folder)
    GET  /healthz           liveness and what is loaded (never waits for the model)
    GET  /metrics           Prometheus text format
    GET  /docs              the OpenAPI page (/openapi.json the schema)
    GET  /                  the web page (densecap/serve/static)

Errors are ``{"detail": "..."}`` saying what was wrong with the request: 400 bad image or boxes
outside the image, 401 missing/wrong token, 403/404 an image that is not served, 413 an upload
over the limit, 422 malformed fields. A rejected request changes nothing but the request metrics.
With a token, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>`` (checked before the
body is read); the page, ``/healthz`` and the docs stay open so the page can ask for the token.
No endpoint fetches anything a client names: images arrive in the request body.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import mimetypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Literal, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .service import BadRequest, DenseCapService, parse_boxes

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FORM_SLACK_BYTES = 1 << 20  # multipart framing and the text fields, on top of the image
SEARCH_BODY_BYTES = 64 << 10
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class SearchRequest(BaseModel):
    query: str = Field(..., min_length=1, max_length=1000, description="text to search for, e.g. 'a red bus'")
    topk: int = Field(10, ge=1, le=1000, description="hits to return")
    mode: Literal["fast", "exact"] = Field("exact", description="exact: every region scored by the language model; "
                                                                  "fast: joint-embedding candidates re-ranked exactly")


def _endpoint(path: str) -> str:
    """A bounded metrics label for a request path."""
    if path in ("/", "/healthz", "/metrics", "/v1/caption", "/v1/search", "/docs", "/openapi.json"):
        return path
    if path.startswith("/v1/images/"):
        return "/v1/images/{name}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


class _Gate:
    """ASGI middleware: the token check (before anything is read) and the request metrics."""

    def __init__(self, app, *, metrics, token: Optional[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.token = token.encode("utf-8") if token else None

    def _authorized(self, scope) -> bool:
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, given = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            if self.token is not None and (path.startswith("/v1/") or path == "/metrics") and not self._authorized(scope):
                await JSONResponse(
                    {"detail": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            ep = _endpoint(path)
            self.metrics.requests.labels(ep, scope.get("method", ""), str(status[0])).inc()
            self.metrics.latency.labels(ep).observe(time.perf_counter() - t0)


def create_app(service: DenseCapService, *, token: Optional[str] = None, max_upload_mb: float = 20.0) -> FastAPI:
    """The app over ``service``. ``token``: require ``Authorization: Bearer <token>`` on ``/v1/*``
    and ``/metrics``. ``max_upload_mb``: larger uploads get 413 (checked while the body is read)."""
    max_upload = int(float(max_upload_mb) * (1 << 20))
    if max_upload <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    search_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="densecap-search")

    @asynccontextmanager
    async def lifespan(app):
        yield
        search_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="densecap",
        summary="Dense captions, captions of boxes you give, whole-image captions and region search.",
        description="Boxes are [x, y, w, h] in original-image pixels (EXIF orientation applied), in and out. "
                    "A caption result is one entry of tools/infer.py's results.json." + (
                        " Send 'Authorization: Bearer <token>' with /v1/* and /metrics." if token else ""),
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_Gate, metrics=service.metrics, token=token)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.post("/v1/caption", max_body_size=max_upload + FORM_SLACK_BYTES,
              summary="Dense captions of an uploaded image (or captions of the boxes given)")
    async def caption(
        image: UploadFile = File(..., description="the image file (JPEG, PNG, ...)"),
        boxes: Optional[str] = Form(None, description="JSON [[x, y, w, h], ...] in original pixels: caption these"),
        max_regions: Optional[int] = Form(None, ge=0, description="at most this many regions, best first (0 = all)"),
        image_caption: bool = Form(False, description="also the whole-image caption (models with that head)"),
        min_score: Optional[float] = Form(None, ge=0.0, le=1.0, description="drop proposed regions scoring below"),
    ):
        service.check_options(image_caption=image_caption)
        data = await image.read(max_upload + 1)
        if len(data) > max_upload:
            raise BadRequest(f"image {image.filename!r}: larger than the {max_upload_mb:g} MB upload limit", 413)
        img = await run_in_threadpool(service.decode, data, image.filename)
        h, w = img.shape[:2]
        given = parse_boxes(boxes, w, h) if boxes is not None and boxes.strip() else None
        try:
            pred = await asyncio.wrap_future(service.batcher.submit(img, given))
        except BadRequest:
            raise
        except Exception as e:  # noqa: BLE001 - the model failed on this image: say so, keep serving
            logger.exception("prediction failed for an upload %r", image.filename)
            return JSONResponse({"detail": f"prediction failed ({type(e).__name__}: {e})"}, status_code=500)
        service.metrics.captioned.inc()
        rec = service.record(pred, image.filename, max_regions=max_regions, min_score=min_score,
                             image_caption=image_caption)
        return JSONResponse(rec)  # plain JSON values already: no re-encoding pass

    @app.post("/v1/search", max_body_size=SEARCH_BODY_BYTES, summary="Regions of the index that match a text")
    async def search(req: SearchRequest):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(search_pool, lambda: service.search(req.query, topk=req.topk, mode=req.mode))

    @app.get("/v1/images/{name:path}", summary="An indexed image (only files inside the index's image folder)")
    async def indexed_image(name: str):
        path = service.image_file(name)
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            media = "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                             "Cache-Control": "private, max-age=3600"})

    @app.get("/healthz", summary="Liveness and what is loaded")
    async def healthz():
        return dict(service.health(), token_required=token is not None, max_upload_mb=float(max_upload_mb))

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
