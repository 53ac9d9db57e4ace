"""The routes of ``siamax serve`` (Starlette), and the guard in front of them: token, upload size, timeout.

Every answer is JSON; every refusal is ``{"error": "..."}`` with its status (400 over a limit, 401 no
or wrong token, 404 no such item or no gallery, 409 empty gallery, 413 upload too large, 415 not the
model's kind of file, 422 malformed request, 504 timed out, 500 a bug: logged, never a traceback to
the client). No route reads or writes a path that a request names: uploads are read from the body,
and the gallery's files are those the index recorded (thumbnails).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import io
import json
import logging
import os
import re

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from siamax import checkpoint, provenance
from siamax.serve import gallery as gallery_
from siamax.serve.batcher import Batcher
from siamax.serve.uploads import Limits, RequestError, decode

log = logging.getLogger("siamax.serve")
OPEN_PATHS = ("/healthz",)
DECODE_THREADS = 1
MAX_K = 100
MAX_LABEL = 200
_ID = re.compile(r"[0-9a-f]{16}")


class Guard:
    """Pure ASGI middleware: the bearer token (every path but /healthz), the upload size (Content-Length,
    then the bytes as they arrive), and a deadline for the whole request (slow uploads included)."""

    def __init__(self, app, *, token: str | None, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.expected = None if token is None else b"Bearer " + token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # constant time: no timing hint at the token
                return await _send_json(send, 401, "missing or wrong token: send 'Authorization: Bearer <token>'")
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _send_json(send, 400, "the Content-Length header is not a number")
        if length > self.max_bytes:
            return await _send_json(send, 413, self._too_large())
        seen = 0

        async def counted():  # Content-Length may be absent (chunked) or lie: count what arrives
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestError(413, self._too_large())
            return message

        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, counted, tracked), self.timeout_s)
        except TimeoutError:
            if not started:
                await _send_json(send, 504, f"the request took longer than {self.timeout_s:g} s")
        except Exception:  # noqa: BLE001  already answered 500 and logged (_internal): Starlette re-raises it,
            # and an exception reaching uvicorn after the answer closes the keep-alive connection under
            # the client's next request
            if not started:
                await _send_json(send, 500, "internal error (logged by the server)")

    def _too_large(self) -> str:
        return f"the upload is larger than this server takes ({self.max_bytes:,} bytes)"


async def _send_json(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _refused(request, exc: RequestError):
    return _error(exc.status, exc.message)


async def _http(request, exc: HTTPException):
    return _error(exc.status_code, str(exc.detail))


async def _internal(request, exc: Exception):
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal error (logged by the server)")


async def _uploads(request: Request, names: tuple[str, ...]) -> tuple[list[bytes], dict]:
    """The files ``names`` of a multipart body, and its other fields."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(422, f"expected a multipart/form-data body with the file field(s) {', '.join(names)}")
    try:
        form = await request.form(max_files=4, max_fields=8, max_part_size=4096)
    except HTTPException as e:  # python-multipart's refusal of the body
        raise RequestError(422, f"malformed multipart body: {e.detail}") from e
    try:
        blobs = []
        for name in names:
            part = form.get(name)
            if not isinstance(part, UploadFile):
                raise RequestError(422, f"missing the file field {name!r} (multipart fields: {', '.join(names)})")
            blobs.append(await part.read())
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()
    return blobs, fields


def _k(fields: dict) -> int:
    text = fields.get("k", "5")
    if not re.fullmatch(r"[0-9]{1,4}", text.strip()) or not 1 <= int(text) <= MAX_K:
        raise RequestError(422, f"k must be a whole number from 1 to {MAX_K}, got {text[:20]!r}")
    return int(text)


def create_app(
    model,
    gallery=None,
    *,
    token: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 32,
    wait_s: float = 0.002,
    timeout_s: float = 30.0,
    warmup: bool = False,
    on_ready=None,
):
    """The ASGI app of ``siamax serve``: ``model`` a ``commands.Model``, ``gallery`` a ``Gallery`` or None.
    ``app.state.batcher`` is its batcher (``calls`` counts device calls); ``on_ready()`` is called
    once it is warm (``siamax serve --workers``: the parent says "serving" when every process is)."""
    limits = limits or Limits()
    batcher = Batcher(model, gallery, max_batch=max_batch, wait_s=wait_s)
    # Uploads decode on one thread, not on Starlette's pool of 40: decoding holds the GIL for most of
    # its time, and threads contending for it decode more slowly (measured: one thread served ~1.3x
    # the requests/s of two; more cores are used by more server processes, --workers)
    decoders = concurrent.futures.ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="siamax-decode")
    spec = model.spec
    info = {
        "fingerprint": checkpoint.fingerprint(model.params),
        "modality": model.modality,
        "input_size": spec.input_size,
        "channels": spec.channels,
        "embedding_dim": spec.embedding_dim,
        "energy": spec.energy,
        "threshold": model.threshold,
        "threshold_from": model.threshold_from,
        "ink": model.ink,
        "siamax_version": provenance.siamax_version(),
    }

    async def images(request, names):
        blobs, fields = await _uploads(request, names)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(decoders, decode, model, blobs, list(names), limits), fields

    def needs_gallery():
        if gallery is None:
            raise RequestError(404, "this server has no gallery: start it with 'siamax serve MODEL --index INDEX'")

    async def healthz(request):
        return JSONResponse({"status": "ok", "worker": os.getpid()})

    async def synced():  # the gallery as saved, whichever server process changed it last
        if gallery is not None:
            await batcher.submit("sync")

    async def model_info(request):
        await synced()
        g = None if gallery is None else {"items": len(gallery), "classes": gallery.classes}
        return JSONResponse(info | {"gallery": g})

    async def verify(request):
        x, _ = await images(request, ("a", "b"))
        p = await batcher.submit("verify", x)
        return JSONResponse({"probability": p, "same": p >= model.threshold, "threshold": model.threshold})

    async def embed(request):
        x, _ = await images(request, ("file",))
        e = await batcher.submit("embed", x)
        return JSONResponse({"embedding": e[0].tolist(), "dim": int(e.shape[1])})

    async def identify(request):
        needs_gallery()
        x, fields = await images(request, ("file",))
        k = _k(fields)
        matches = await batcher.submit("identify", x, k)
        if matches is None:
            raise RequestError(409, "the gallery is empty: add items with POST /v1/index/items")
        for m in matches:
            path = gallery.items.get(m["id"], (None, None, ""))[2]
            if not path.startswith(gallery_.UPLOAD) and model.modality != "audio":
                m["thumbnail"] = f"/v1/index/items/{m['id']}/thumbnail"
        return JSONResponse({"k": k, "matches": matches})

    async def add_item(request):
        needs_gallery()
        x, fields = await images(request, ("file",))
        label = fields.get("label", "").strip()
        if not label or len(label) > MAX_LABEL or not label.isprintable():
            raise RequestError(422, f"label must be a printable class name of 1 to {MAX_LABEL} characters")
        item = await batcher.submit("add", x, label)
        return JSONResponse({"id": item, "label": label, "items": len(gallery)}, status_code=201)

    async def item_of(request) -> str:
        needs_gallery()
        item = request.path_params["id"]
        if _ID.fullmatch(item):
            await synced()
            if item in gallery.items:
                return item
        raise RequestError(404, f"no gallery item {item[:32]!r}")

    async def remove_item(request):
        item = await item_of(request)
        if not await batcher.submit("remove", None, item):
            raise RequestError(404, f"no gallery item {item!r}")
        return JSONResponse({"removed": item, "items": len(gallery)})

    async def thumbnail(request):
        path = gallery.items.get(await item_of(request), (None, None, gallery_.UPLOAD))[2]  # removed meanwhile: 404
        if path.startswith(gallery_.UPLOAD) or model.modality == "audio":
            raise RequestError(404, "this item has no picture (an upload, or a sound clip)")
        return Response(await run_in_threadpool(_thumbnail, path, limits), media_type="image/png")

    async def openapi(request):
        return JSONResponse(OPENAPI)

    async def page(request):
        return Response(_page(), media_type="text/html")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        if warmup:
            await asyncio.get_running_loop().run_in_executor(batcher._device, batcher.warm)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=False)

    routes = [
        Route("/", page),
        Route("/healthz", healthz),
        Route("/openapi.json", openapi),
        Route("/v1/model", model_info),
        Route("/v1/verify", verify, methods=["POST"]),
        Route("/v1/embed", embed, methods=["POST"]),
        Route("/v1/identify", identify, methods=["POST"]),
        Route("/v1/index/items", add_item, methods=["POST"]),
        Route("/v1/index/items/{id}", remove_item, methods=["DELETE"]),
        Route("/v1/index/items/{id}/thumbnail", thumbnail),
    ]
    handlers = {RequestError: _refused, HTTPException: _http, Exception: _internal}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.batcher = batcher
    return Guard(app, token=token, max_bytes=limits.max_upload_bytes, timeout_s=timeout_s)


def _thumbnail(path: str, limits: Limits) -> bytes:
    """A PNG of at most 128 x 128 of a gallery file the index recorded (404 if it is gone or unreadable)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > limits.max_pixels:
                raise RequestError(404, "the gallery item's picture is too large to show")
            im.thumbnail((128, 128))
            out = io.BytesIO()
            im.convert("RGBA").save(out, format="PNG")
            return out.getvalue()
    except OSError as e:
        raise RequestError(404, "the gallery item's file can no longer be read") from e


def _page() -> bytes:
    from importlib import resources  # pylint: disable=g-import-not-at-top

    return resources.files("siamax.serve").joinpath("page.html").read_bytes()


_FILE = {"type": "string", "format": "binary"}


def _post(summary: str, fields: dict, required: list[str], returns: dict) -> dict:
    body = {"multipart/form-data": {"schema": {"type": "object", "properties": fields, "required": required}}}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": body}, "responses": returns}}


_ERRORS = {str(s): {"description": d} for s, d in [(400, "over a limit"), (401, "no or wrong token"),
           (413, "upload too large"), (415, "not the model's kind of file"), (422, "malformed request")]}  # fmt: skip
OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "siamax serve", "version": "1"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {"summary": "liveness (no token needed)", "security": [], "responses": {"200": {}}}},
        "/v1/model": {
            "get": {
                "summary": "fingerprint, modality, input size, threshold, gallery size",
                "responses": {"200": {"description": "the model"}},
            }
        },  # fmt: skip
        "/v1/verify": _post(
            "same class or not: {probability, same, threshold}",
            {"a": _FILE, "b": _FILE},
            ["a", "b"],
            {"200": {"description": "the verdict"}, **_ERRORS},
        ),  # fmt: skip
        "/v1/embed": _post(
            "the embedding of one file: {embedding, dim}",
            {"file": _FILE},
            ["file"],
            {"200": {"description": "the embedding"}, **_ERRORS},
        ),  # fmt: skip
        "/v1/identify": _post(
            "the k best gallery classes: {k, matches: [{label, score, id, thumbnail?}]}",
            {"file": _FILE, "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5}},
            ["file"],
            {"200": {"description": "the matches"}, "404": {}, "409": {}, **_ERRORS},
        ),  # fmt: skip
        "/v1/index/items": _post(
            "add one gallery item (saved before the answer): {id, label, items}",
            {"file": _FILE, "label": {"type": "string", "maxLength": MAX_LABEL}},
            ["file", "label"],
            {"201": {"description": "added"}, "404": {}, **_ERRORS},
        ),  # fmt: skip
        "/v1/index/items/{id}": {
            "delete": {
                "summary": "remove a gallery item (saved before the answer)",
                "responses": {"200": {"description": "removed"}, "404": {}},
            }
        },  # fmt: skip
        "/v1/index/items/{id}/thumbnail": {
            "get": {
                "summary": "a PNG of a gallery item built from a file",
                "responses": {"200": {"content": {"image/png": {}}}, "404": {}},
            }
        },  # fmt: skip
    },
}
