"""The vision server's ASGI app: the service's routes behind the request gate, with errors in the APIs' shapes.

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

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..documents.descriptions import PictureDescriber
from .errors import error_response
from .middleware import RequestGate
from .service import ServerSettings, VisionService

log = logging.getLogger(__name__)


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
    gate = Middleware(
        RequestGate,
        counts=service.counts,
        token=token,
        body_limit=settings.max_body_bytes,
        upload_limit=settings.max_upload_bytes,
    )
    app = Starlette(
        routes=routes,
        middleware=[gate],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=service.lifespan,
    )
    app.state.service = service
    return app


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
