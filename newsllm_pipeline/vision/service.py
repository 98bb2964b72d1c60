"""The describer service: one describer, called behind `max_concurrency` call slots (`serving.slots`) so the
event loop keeps answering while it works, and the endpoints that read a request, describe its
image and answer in the original API's or OpenAI's shape."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass
from importlib import resources

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..documents.descriptions import DEFAULT_PROMPT, DescriptionError, PictureDescriber
from ..serving.errors import ServiceError, busy_headers, json_object
from ..serving.gate import MB, RequestCounts
from ..serving.slots import CallSlots
from .errors import error_response
from .request_bodies import chat_request, decode_image_field, question
from .uploads import ACCEPTED_FORMATS, ReceivedImage, Upload, check_upload, decode_upload

log = logging.getLogger(__name__)


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
        self._page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        self.slots = CallSlots(settings.max_concurrency, settings.max_waiting, self.counts, "describer")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        async with self.slots.open():
            log.info(
                "describing with %s (%s backend on %s), %d at a time",
                self.settings.model,
                self.settings.backend,
                self.settings.device,
                self.settings.max_concurrency,
            )
            yield

    async def describe(self, read_request, request: Request) -> Description:
        """Read the question and check the image with `read_request` (in a thread), then, in a free slot,
        decode it and run the describer. Decoding waits for the slot too: a small PNG can decode to hundreds of
        megabytes, so pixels in memory are bounded by `max_concurrency`, not by the requests in flight."""
        started = time.perf_counter()
        prompt, upload = await read_request(request)
        checked = time.perf_counter()
        async with self.slots.held():
            queued = time.perf_counter()
            try:
                image = await self.slots.call(decode_upload, upload, self.settings.max_side)
                decoded = time.perf_counter()
                text = await self.slots.call(self.describer.describe_picture, image.picture, prompt)
            except ServiceError:
                raise
            except DescriptionError as error:
                message = f"the model could not describe the image: {error}"
                raise ServiceError(message, 500, "describer_error") from error
            except Exception as error:
                log.exception("the describer failed on a %s image", upload.format)
                raise ServiceError(
                    f"the describer failed ({type(error).__name__}); see the server log", 500, "describer_error"
                ) from error
        finished = time.perf_counter()
        decode_s = (checked - started) + (decoded - queued)
        return Description(text, prompt, image, decode_s, queued - checked, finished - decoded, finished - started)

    # Readers: (question, image) from each kind of request --------------------------------------------------

    def _checked(self, data: bytes) -> Upload:
        return check_upload(data, self.settings.max_upload_bytes, self.settings.max_pixels)

    async def read_multipart(self, request: Request) -> tuple[str, Upload]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServiceError("send multipart/form-data with an `image` file and a `text` field")
        async with request.form(max_files=1, max_fields=8, max_part_size=MB) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ServiceError("no `image` file in the form", code="missing_image")
            data = await upload.read()
            prompt = question(form.get("text"), self.settings.default_prompt)
        return prompt, await run_in_threadpool(self._checked, data)

    async def read_base64(self, request: Request) -> tuple[str, Upload]:
        body = await request.body()

        def parse() -> tuple[str, Upload]:
            payload = json_object(body)
            if "image" not in payload:
                raise ServiceError("no `image` in the JSON body", code="missing_image")
            data = decode_image_field(payload["image"])
            return question(payload.get("text"), self.settings.default_prompt), self._checked(data)

        return await run_in_threadpool(parse)

    async def read_chat(self, request: Request) -> tuple[str, Upload]:
        body = await request.body()

        def parse() -> tuple[str, Upload]:
            model, prompt, data = chat_request(json_object(body))
            request.state.model = model
            return prompt or self.settings.default_prompt, self._checked(data)

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
        settings = self.settings
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
                "requests": self.counts.report(),
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self._page.replace("{model}", self.settings.model))


def _failure(request: Request, error: ServiceError) -> JSONResponse:
    return error_response(request.url.path, error.status, error.message, error.code, busy_headers(error))


def _estimated_tokens(text: str) -> int:
    return max(1, round(len(text) / 4))
