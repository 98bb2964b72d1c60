"""The image-description server: one describer, loaded once, behind a small HTTP API.

    GET  /                      a page to upload an image and ask a question about it
    GET  /health                liveness (open: no token needed)
    GET  /status                backend, model, device, uptime, request counts
    POST /analyze               multipart: `image` (file) and `text` (the question)
    POST /analyze_base64        JSON: {"image": data URL or plain base64, "text": question}
    POST /v1/chat/completions   OpenAI chat completions with one `image_url` part holding a data URL
    GET  /v1/models             the served model, for OpenAI clients that list models first

Every path but `/` and `/health` needs `Authorization: Bearer <token>`; the token is compared in constant time
and never logged (the log has method, path, status and milliseconds only). The describer runs in a thread pool
behind a semaphore of `max_concurrency` slots, so the event loop keeps answering while it works. An image is
checked (format, declared size, structure) before it waits and decoded only inside a slot: a request waiting
holds its bytes (at most `max_upload_bytes`, `max_waiting` requests), and decoded pixels are bounded by
`max_concurrency` × `max_pixels` × 4 bytes (160 MB a slot at the defaults). Bad client input (no image, a format
outside JPG/PNG/BMP/TIFF/GIF, corrupt bytes, a decompression bomb, an oversized upload, JSON that is not an
object or is nested too deeply) is a 4xx with the reason; only a describer failure is a 5xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hmac
import io
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..documents.descriptions import DEFAULT_PROMPT, DescriptionError, PictureDescriber, rgb_on_white

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "NEWSLLM_VISION_TOKEN"
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF")  # Pillow's names, judged from the bytes
ACCEPTED_NAMES = "JPG, PNG, BMP, TIFF or GIF"
OPEN_PATHS = frozenset({"/", "/health"})
DESCRIBE_PATHS = frozenset({"/analyze", "/analyze_base64", "/v1/chat/completions"})
MB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """What the server reports about itself, and the limits it enforces."""

    backend: str = "ocr"
    model: str = "rapidocr"
    device: str = "cpu"
    max_concurrency: int = 1  # describer calls at once; further requests wait for a slot
    max_waiting: int = 64  # requests waiting for a slot; beyond this new ones get 503
    max_upload_bytes: int = 20 * MB  # the image itself (as base64 the request is a third larger)
    max_side: int = 1536  # a longer side is scaled down to this before the describer
    max_pixels: int = 40_000_000  # width × height as the file declares it: decompression bombs stop here
    default_prompt: str = DEFAULT_PROMPT

    @property
    def max_body_bytes(self) -> int:
        """Room for the image as base64 plus the form fields or JSON around it."""
        return math.ceil(self.max_upload_bytes * 4 / 3) + MB


class ServiceError(Exception):
    """A request the server answers with an error: 4xx for the client's input, 5xx for its own failures."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class _BodyTooLarge(Exception):
    pass


def error_response(path: str, status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1/, the original API's `{"success": false, "error": ...}` elsewhere."""
    if path.startswith("/v1/"):
        kind = {401: "authentication_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "code": code}}
    else:
        body = {"success": False, "error": message}
    return JSONResponse(body, status_code=status, headers=headers)


# Images ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedImage:
    picture: Image.Image  # RGB, transparent areas on white, longest side at most max_side
    format: str
    width: int  # as received
    height: int
    bytes: int

    def summary(self) -> dict:
        resized = self.picture.size != (self.width, self.height)
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "described_at": list(self.picture.size) if resized else None,
        }


@dataclass(frozen=True)
class Upload:
    """An image as received, checked (format, declared size, structure) but not decoded: what a request
    holds while it waits for a slot, so waiting costs its bytes and not its pixels."""

    data: bytes
    format: str
    width: int
    height: int


def check_upload(data: bytes, settings: ServerSettings) -> Upload:
    """The uploaded bytes judged by content (not by any file name), without decoding the pixels.
    Raises ServiceError (400, 413 for size) with the reason."""
    if not data:
        raise ServiceError("the image is empty (0 bytes)", code="invalid_image")
    if len(data) > settings.max_upload_bytes:
        raise ServiceError(
            f"the image is {len(data) / MB:.1f} MB, over the {settings.max_upload_bytes / MB:.3g} MB limit",
            413,
            "image_too_large",
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            kind, (width, height) = opened.format, opened.size
            if kind not in ACCEPTED_FORMATS:
                raise ServiceError(f"{kind} images are not accepted: send {ACCEPTED_NAMES}", code="unsupported_format")
            if width * height > settings.max_pixels:
                raise ServiceError(
                    f"the image declares {width} × {height} pixels, over the limit of {settings.max_pixels:,} "
                    "pixels (a decompression bomb, or a picture to scale down first)",
                    code="image_too_large",
                )
            opened.verify()  # checksums and structure, without decoding
    except ServiceError:
        raise
    except Image.UnidentifiedImageError as error:
        raise ServiceError(f"not an image in a known format: send {ACCEPTED_NAMES}", code="invalid_image") from error
    except Exception as error:  # any decoder failure on the client's bytes is bad input, never a server fault
        raise ServiceError(f"not a readable image: {error}", code="invalid_image") from error
    return Upload(data, kind, width, height)


def decode_upload(upload: Upload, settings: ServerSettings) -> ReceivedImage:
    """The pixels, ready for the describer. Run only inside a describer slot: the full-size picture takes up
    to `max_pixels` × 4 bytes in memory, whatever its size on the wire, and is scaled down before any copy."""
    try:
        with Image.open(io.BytesIO(upload.data)) as opened:
            if opened.mode not in _COARSELY_RESIZED_MODES:
                _fit(opened, settings.max_side)  # decodes (JPEG at a reduced scale) and shrinks in place
            opened.load()
            picture = rgb_on_white(opened)
    except Exception as error:  # verify() passed, but the pixel data itself can still be corrupt
        raise ServiceError(f"not a readable image: {error}", code="invalid_image") from error
    _fit(picture, settings.max_side)
    return ReceivedImage(picture, upload.format, upload.width, upload.height, len(upload.data))


_COARSELY_RESIZED_MODES = ("1", "P", "PA")  # Pillow resizes these with NEAREST: convert them to RGB first


def _fit(picture: Image.Image, max_side: int) -> None:
    """Scale `picture` down in place so its longer side is at most `max_side`."""
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)


def decode_image_field(value: object) -> bytes:
    """The bytes of a data URL (`data:image/png;base64,...`) or of plain base64 text."""
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(
            "`image` must be a data URL (data:image/png;base64,...) or base64 text", code="invalid_image"
        )
    value = value.strip()
    if value.startswith(("http://", "https://")):
        raise ServiceError(
            "remote image URLs are not fetched: send the image inline as a data URL (data:image/png;base64,...)",
            code="remote_image_url",
        )
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ServiceError("only base64 data URLs are accepted (data:image/png;base64,...)", code="invalid_image")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ServiceError(f"the image is not valid base64 ({error})", code="invalid_image") from error


def _json_object(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise ServiceError(f"the body is not valid JSON ({error})") from error
    except RecursionError as error:  # the parser recurses once per nesting level
        raise ServiceError("the body is not valid JSON here: it is nested too deeply") from error
    if not isinstance(payload, dict):
        raise ServiceError("the body must be a JSON object")
    return payload


def _question(text: object, default: str) -> str:
    if text is None or (isinstance(text, str) and not text.strip()):
        return default
    if not isinstance(text, str):
        raise ServiceError("`text` must be a string")
    return text.strip()


def chat_request(payload: dict) -> tuple[str | None, str | None, bytes]:
    """(model, question, image bytes) from an OpenAI chat completions body: the last user message, its text
    parts joined, and its one `image_url` part. `max_tokens`/`max_completion_tokens` are checked but do not
    change the answer: its length is the backend's own (OCR's text cap, the model's max_new_tokens)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServiceError("`messages` must be a non-empty list")
    for limit in ("max_tokens", "max_completion_tokens"):
        value = payload.get(limit)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ServiceError(f"`{limit}` must be a positive integer")
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise ServiceError("`model` must be a string")
    users = [message for message in messages if isinstance(message, dict) and message.get("role") == "user"]
    if not users:
        raise ServiceError("no message with role `user`")
    content = users[-1].get("content")
    if isinstance(content, str):
        raise ServiceError("the user message has no image: add an `image_url` content part", code="missing_image")
    if not isinstance(content, list):
        raise ServiceError("the user message's `content` must be a list of parts")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image_url = part.get("image_url")
            images.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
        else:
            raise ServiceError(f"unsupported content part {kind!r}: use `text` and `image_url` parts")
    if len(images) != 1:
        raise ServiceError(f"send exactly one `image_url` part per request, not {len(images)}", code="missing_image")
    return model, "\n".join(text for text in texts if text.strip()) or None, decode_image_field(images[0])


# The service -------------------------------------------------------------------------------------------------


@dataclass
class RequestCounts:
    """Description requests that passed authentication; touched only on the event loop's thread."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    waiting: int = 0  # for a describer slot
    running: int = 0  # describer calls now
    peak_running: int = 0
    latency_s: float = 0.0  # summed over the succeeded ones


@dataclass(frozen=True)
class Description:
    text: str
    prompt: str
    image: ReceivedImage
    decode_s: float
    queue_s: float
    model_s: float
    total_s: float

    def timing(self) -> dict:
        return {name: round(getattr(self, name), 4) for name in ("decode_s", "queue_s", "model_s", "total_s")}


class VisionService:
    def __init__(self, describer: PictureDescriber, settings: ServerSettings):
        self.describer, self.settings = describer, settings
        self.counts = RequestCounts()
        self.started_at = dt.datetime.now(dt.UTC)
        self._started = time.monotonic()
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        self._executor = ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="describer")
        log.info(
            "describing with %s (%s backend on %s), %d at a time",
            self.settings.model,
            self.settings.backend,
            self.settings.device,
            self.settings.max_concurrency,
        )
        try:
            yield
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def describe(self, read_request, request: Request) -> Description:
        """Read the question and check the image with `read_request` (in a thread), then, in a free slot,
        decode it and run the describer. Decoding waits for the slot too: a small PNG can decode to hundreds of
        megabytes, so pixels in memory are bounded by `max_concurrency`, not by the requests in flight."""
        started = time.perf_counter()
        prompt, upload = await read_request(request)
        checked = time.perf_counter()
        if self.counts.waiting >= self.settings.max_waiting:
            raise ServiceError(f"the server is busy ({self.counts.waiting} requests waiting): retry later", 503, "busy")
        self.counts.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.counts.waiting -= 1
        queued = time.perf_counter()
        self.counts.running += 1
        self.counts.peak_running = max(self.counts.peak_running, self.counts.running)
        try:
            loop = asyncio.get_running_loop()
            image = await loop.run_in_executor(self._executor, decode_upload, upload, self.settings)
            decoded = time.perf_counter()
            text = await loop.run_in_executor(self._executor, self.describer.describe_picture, image.picture, prompt)
        except ServiceError:
            raise
        except DescriptionError as error:
            raise ServiceError(f"the model could not describe the image: {error}", 500, "describer_error") from error
        except Exception as error:
            log.exception("the describer failed on a %s image", upload.format)
            raise ServiceError(
                f"the describer failed ({type(error).__name__}); see the server log", 500, "describer_error"
            ) from error
        finally:
            self.counts.running -= 1
            self._slots.release()
        finished = time.perf_counter()
        decode_s = (checked - started) + (decoded - queued)
        return Description(text, prompt, image, decode_s, queued - checked, finished - decoded, finished - started)

    # Readers: (question, image) from each kind of request --------------------------------------------------

    async def read_multipart(self, request: Request) -> tuple[str, Upload]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServiceError("send multipart/form-data with an `image` file and a `text` field")
        async with request.form(max_files=1, max_fields=8, max_part_size=MB) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ServiceError("no `image` file in the form", code="missing_image")
            data = await upload.read()
            prompt = _question(form.get("text"), self.settings.default_prompt)
        return prompt, await run_in_threadpool(check_upload, data, self.settings)

    async def read_base64(self, request: Request) -> tuple[str, Upload]:
        body = await request.body()

        def parse() -> tuple[str, Upload]:
            payload = _json_object(body)
            if "image" not in payload:
                raise ServiceError("no `image` in the JSON body", code="missing_image")
            data = decode_image_field(payload["image"])
            return _question(payload.get("text"), self.settings.default_prompt), check_upload(data, self.settings)

        return await run_in_threadpool(parse)

    async def read_chat(self, request: Request) -> tuple[str, Upload]:
        body = await request.body()

        def parse() -> tuple[str, Upload]:
            model, prompt, data = chat_request(_json_object(body))
            request.state.model = model
            return prompt or self.settings.default_prompt, check_upload(data, self.settings)

        return await run_in_threadpool(parse)

    # Endpoints -----------------------------------------------------------------------------------------------

    async def analyze(self, request: Request) -> Response:
        return await self._analyze(request, self.read_multipart)

    async def analyze_base64(self, request: Request) -> Response:
        return await self._analyze(request, self.read_base64)

    async def _analyze(self, request: Request, read_request) -> Response:
        try:
            description = await self.describe(read_request, request)
        except ServiceError as error:
            return _failure(request, error)
        return JSONResponse(
            {
                "success": True,
                "response": description.text,
                "prompt": description.prompt,
                "model": self.settings.model,
                "backend": self.settings.backend,
                "image": description.image.summary(),
                "processing_time": round(description.total_s, 4),
                "timing": description.timing(),
            }
        )

    async def chat_completions(self, request: Request) -> Response:
        try:
            description = await self.describe(self.read_chat, request)
        except ServiceError as error:
            return _failure(request, error)
        # Token counts are estimates (about 4 characters a token, the picture not counted): the OCR backend has
        # no tokenizer, and clients such as Docling only read them as metadata.
        prompt_tokens, completion_tokens = _estimated_tokens(description.prompt), _estimated_tokens(description.text)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": getattr(request.state, "model", None) or self.settings.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": description.text},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def models(self, request: Request) -> Response:
        created = int(self.started_at.timestamp())
        return JSONResponse(
            {"object": "list", "data": [{"id": self.settings.model, "object": "model", "created": created}]}
        )

    async def status(self, request: Request) -> Response:
        counts, settings = self.counts, self.settings
        return JSONResponse(
            {
                "status": "ok",
                "backend": settings.backend,
                "model": settings.model,
                "device": settings.device,
                "started_at": self.started_at.isoformat(timespec="seconds"),
                "uptime_s": round(time.monotonic() - self._started, 1),
                "max_concurrency": settings.max_concurrency,
                "limits": {
                    "max_upload_bytes": settings.max_upload_bytes,
                    "max_side": settings.max_side,
                    "max_pixels": settings.max_pixels,
                    "formats": list(ACCEPTED_FORMATS),
                },
                "requests": {
                    "total": counts.total,
                    "succeeded": counts.succeeded,
                    "failed": counts.failed,
                    "unauthorized": counts.unauthorized,
                    "in_flight": counts.in_flight,
                    "waiting": counts.waiting,
                    "running": counts.running,
                    "peak_running": counts.peak_running,
                    "mean_latency_ms": round(1000 * counts.latency_s / counts.succeeded, 1)
                    if counts.succeeded
                    else None,
                },
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.replace("{model}", self.settings.model))


def _failure(request: Request, error: ServiceError) -> JSONResponse:
    headers = {"Retry-After": "5"} if error.status == 503 else None  # Docling's client honours it
    return error_response(request.url.path, error.status, error.message, error.code, headers)


def _estimated_tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


class _Gate:
    """Around every HTTP request: the bearer token (all paths but the open ones), the body size, the counts of
    description requests, and one log line with method, path, status and milliseconds (never headers)."""

    def __init__(self, app, service: VisionService, token: str | None):
        self.app, self.service = app, service
        self._token = token.encode("utf-8") if token is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, path = time.perf_counter(), scope["path"]
        status = 0

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = scope["method"] == "POST" and path in DESCRIBE_PATHS
        try:
            await self._guarded(scope, receive, send_and_note, counted)
        finally:
            seconds = time.perf_counter() - started
            log.info("%s %s %s %.0f ms", scope["method"], path, status or "-", 1000 * seconds)
            counts = self.service.counts
            if status == 401:
                counts.unauthorized += 1
            elif counted:
                counts.in_flight -= 1
                if 200 <= status < 400:
                    counts.succeeded += 1
                    counts.latency_s += seconds
                else:
                    counts.failed += 1

    async def _guarded(self, scope, receive, send, counted: bool):
        headers, path = Headers(scope=scope), scope["path"]
        if self._token is not None and path not in OPEN_PATHS:
            problem = self._token_problem(headers.get("authorization"))
            if problem:
                response = error_response(path, 401, problem, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if counted:
            self.service.counts.total += 1
            self.service.counts.in_flight += 1
        limit = self.service.settings.max_body_bytes
        too_large = error_response(
            path,
            413,
            f"the request is larger than {limit / MB:.1f} MB (images up to "
            f"{self.service.settings.max_upload_bytes / MB:.3g} MB)",
            "request_too_large",
        )
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def send_and_note(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_and_note)
        except _BodyTooLarge:
            if not started:
                await too_large(scope, receive, send)

    def _token_problem(self, authorization: str | None) -> str | None:
        if not authorization:
            return "missing token: send the header `Authorization: Bearer <token>` (the server's NEWSLLM_VISION_TOKEN)"
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "malformed Authorization header: send `Authorization: Bearer <token>`"
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            return "invalid token"
        return None


async def _http_error(request: Request, error: HTTPException) -> Response:
    return error_response(
        request.url.path,
        error.status_code,
        str(error.detail),
        "not_found" if error.status_code == 404 else "invalid_request",
    )


async def _unexpected_error(request: Request, error: Exception) -> Response:
    """A bug, not the client's fault: a 500 in the API's error shape, the traceback in the log only."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(request.url.path, 500, "internal server error; see the server log", "internal_error")


def create_app(describer: PictureDescriber, token: str | None, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app around `describer` (already loaded). `token` None serves without authentication."""
    if token is not None and not token.strip():
        raise ValueError("the token is empty: set a real token, or pass None to serve without authentication")
    settings = settings or ServerSettings(model=describer.name)
    service = VisionService(describer, settings)
    routes = [
        Route("/", service.page, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/status", service.status, methods=["GET"]),
        Route("/analyze", service.analyze, methods=["POST"]),
        Route("/analyze_base64", service.analyze_base64, methods=["POST"]),
        Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
        Route("/v1/models", service.models, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Gate, service=service, token=token)],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=service.lifespan,
    )
    app.state.service = service
    return app


# Starting it -------------------------------------------------------------------------------------------------


def load_describer(
    backend: str,
    model: str | None = None,
    device: str = "auto",
    load_in_8bit: bool = False,
    max_new_tokens: int = 256,
) -> PictureDescriber:
    """The describer the server holds: `ocr` (RapidOCR, offline) or `transformers` (a local VLM folder)."""
    from ..documents import descriptions

    if backend == "ocr":
        return descriptions.OcrDescriber()
    if backend == "transformers":
        if not model:
            raise ValueError("the transformers backend needs --model: a local vision-language model folder")
        return descriptions.TransformersDescriber(
            model, device=device, max_new_tokens=max_new_tokens, load_in_8bit=load_in_8bit
        )
    raise ValueError(f"unknown backend {backend!r}: use 'ocr' or 'transformers'")


def token_from_environment(no_auth: bool) -> str | None:
    """The bearer token from NEWSLLM_VISION_TOKEN; without one the server only starts when told `no_auth`."""
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if no_auth:
        return None
    if not token:
        raise ValueError(
            f"{TOKEN_VARIABLE} is not set: set it to a secret token (e.g. `export {TOKEN_VARIABLE}=$(openssl rand "
            "-hex 24)`), or pass --no-auth to serve without authentication on a trusted network"
        )
    return token


def default_concurrency(backend: str) -> int:
    """OCR: two calls at once where there are two cores (ONNX Runtime spreads one call over the cores, so more
    only queues inside it); a model on one GPU: one call at a time."""
    return min(2, os.cpu_count() or 1) if backend == "ocr" else 1


def start_server(
    host: str,
    port: int,
    backend: str = "ocr",
    model: str | None = None,
    device: str = "auto",
    load_in_8bit: bool = False,
    max_new_tokens: int = 256,
    max_concurrency: int | None = None,
    max_upload_bytes: int = 20 * MB,
    max_side: int = 1536,
    no_auth: bool = False,
) -> None:
    """What `newsllm vision-server` does: check the token, load the describer once, serve until interrupted."""
    token = token_from_environment(no_auth)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token is None:
        log.warning(
            "serving WITHOUT authentication (--no-auth): anyone who reaches %s:%d can use the model", host, port
        )
    log.info("loading the %s describer%s ...", backend, f" from {model}" if model else "")
    describer = load_describer(backend, model, device, load_in_8bit, max_new_tokens)
    settings = ServerSettings(
        backend=backend,
        model=describer.name,
        device=getattr(describer, "device", "cpu"),
        max_concurrency=max_concurrency or default_concurrency(backend),
        max_upload_bytes=max_upload_bytes,
        max_side=max_side,
    )
    serve(create_app(describer, token, settings), host, port)


def serve(app: Starlette, host: str, port: int) -> None:
    """Run `app` until interrupted, logging to stderr through the standard logging module."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@contextlib.contextmanager
def running_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a background thread (port 0: a free one) and yield its base URL; stopped on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="vision-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the vision server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


PAGE = """<!doctype html>
<html lang="es">
<head>
<meta charset="utf-8">
<title>newsllm · descripción de imágenes</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
  label { display: block; margin-top: 1rem; font-weight: 600; }
  input, textarea, button { font: inherit; width: 100%; box-sizing: border-box; margin-top: .3rem; }
  button { width: auto; padding: .4rem 1.2rem; margin-top: 1rem; }
  #answer { white-space: pre-wrap; background: #f4f4f4; padding: 1rem; margin-top: 1rem; min-height: 2rem; }
  .error { color: #a00; }
</style>
</head>
<body>
<h1>Descripción de imágenes</h1>
<p>Modelo: <code>{model}</code>. JPG, PNG, BMP, TIFF o GIF.</p>
<form id="form">
  <label>Token <input id="token" type="password" autocomplete="off" placeholder="NEWSLLM_VISION_TOKEN"></label>
  <label>Imagen <input id="image" name="image" type="file" accept="image/*" required></label>
  <label>Pregunta <textarea id="text" name="text" rows="3">Describe esta imagen en español.</textarea></label>
  <button type="submit">Analizar</button>
</form>
<div id="answer"></div>
<script>
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = document.getElementById("answer");
  const data = new FormData();
  data.append("image", document.getElementById("image").files[0]);
  data.append("text", document.getElementById("text").value);
  const token = document.getElementById("token").value;
  answer.className = ""; answer.textContent = "Analizando…";
  try {
    const reply = await fetch("analyze", {
      method: "POST", body: data, headers: token ? {"Authorization": "Bearer " + token} : {}
    });
    const result = await reply.json();
    if (result.success) {
      answer.textContent = result.response + "\\n\\n(" + result.processing_time.toFixed(2) + " s)";
    } else {
      answer.className = "error"; answer.textContent = "Error " + reply.status + ": " + result.error;
    }
  } catch (error) {
    answer.className = "error"; answer.textContent = "Error: " + error;
  }
});
</script>
</body>
</html>
"""
