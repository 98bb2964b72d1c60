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

from starlette.applications import Starlette
from starlette.routing import Route

from ..documents.descriptions import PictureDescriber
from ..serving.app import gated_app
from ..serving.gate import MB, GateRules
from .errors import error_response
from .service import ServerSettings, VisionService

TOKEN_VARIABLE = "NEWSLLM_VISION_TOKEN"
OPEN_PATHS = frozenset({"/", "/health"})
DESCRIBE_PATHS = frozenset({"/analyze", "/analyze_base64", "/v1/chat/completions"})


def create_app(describer: PictureDescriber, token: str | None, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app around `describer` (already loaded). `token` None serves without authentication."""
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
    limit = settings.max_body_bytes
    rules = GateRules(
        token_variable=TOKEN_VARIABLE,
        counted_paths=DESCRIBE_PATHS,
        open_paths=OPEN_PATHS,
        body_limit=limit,
        too_large=f"the request is larger than {limit / MB:.1f} MB (images up to {settings.max_upload_bytes / MB:.3g} "
        "MB)",
        error_response=error_response,
    )
    app = gated_app(routes, service.counts, token, rules, service.lifespan)
    app.state.service = service
    return app
