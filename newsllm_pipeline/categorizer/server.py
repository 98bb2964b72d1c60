"""The resident categoriser: one categoriser, loaded once and served over HTTP, so pipeline runs are thin clients
(`RemoteCategorizerResource`, NEWSLLM_BACKEND=remote) and every job on the machine shares one loaded model per
card.

    GET  /health          liveness (open: no token needed)
    GET  /status          model, backend, device, categories, adapter, uptime, request counts
    POST /v1/categorize   {"texts": [...]} -> {"results": [...], "model": ..., "adapter": ...} (see `wire`)

The categoriser is the pipeline's own: `categorizer_from_settings()` builds it from the same NEWSLLM_* settings
(model folder, adapter, device, calibration), so the server answers what an in-process run would. The model
answers one request at a time on its own thread while the event loop keeps accepting; up to `max_waiting`
requests queue for it and further ones get a 503 with Retry-After. Every path but `/health` needs
`Authorization: Bearer $NEWSLLM_CATEGORIZER_TOKEN` (the gate of `newsllm_pipeline.serving`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..models import resolve_model_dir
from ..resources.noticias import CATEGORIZER_BACKENDS, LocalCategorizerResource, categorizer_from_settings
from ..serving.app import gated_app
from ..serving.errors import ServiceError, busy_headers, json_object, plain_error_response
from ..serving.gate import MB, GateRules, RequestCounts
from ..serving.server import serve, start_logging, token_from_environment
from ..serving.slots import CallSlots
from ..settings import setting
from .wire import CATEGORIZE_PATH, TOKEN_VARIABLE, result_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    max_waiting: int = 64  # requests queued for the model; beyond this new ones get 503
    max_texts: int = 512  # texts in one request
    max_body_bytes: int = 4 * MB


class CategorizerService:
    def __init__(self, categorizer: LocalCategorizerResource, settings: ServerSettings):
        self.categorizer, self.settings = categorizer, settings
        self.backend = next(name for name, kind in CATEGORIZER_BACKENDS.items() if type(categorizer) is kind)
        self.model = resolve_model_dir(categorizer.model_dir)
        self.device: str | None = None  # known once the model is loaded, when the app starts
        self.counts = RequestCounts()
        self.slots = CallSlots(1, settings.max_waiting, self.counts, "categorizer")
        self.started_at = dt.datetime.now(dt.UTC)
        self._started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        async with self.slots.open():
            # The model's thread loads it too: on CPU, torch work from a second thread (a second OpenMP team) made
            # every later call a sixth slower, so the model is never touched from any other thread.
            self.device = await self.slots.call(self._load)
            log.info(
                "categorising with %s (%s backend on %s), adapter %s",
                self.model,
                self.backend,
                self.device,
                self.adapter(),
            )
            yield

    def adapter(self) -> str | None:
        """The adapter in use now (a moved `current` link is followed, as in-process runs follow it)."""
        adapter = self.categorizer.trained_adapter()
        return str(Path(adapter).resolve()) if adapter else None

    def _load(self) -> str:
        return str(getattr(self.categorizer.load(), "device", "cuda"))  # exllamav2 spreads over its cards

    def _categorize(self, texts: Sequence[str]) -> tuple[list, str | None]:
        return self.categorizer.categorize(texts), self.adapter()

    async def categorize(self, request: Request) -> Response:
        try:
            texts = await run_in_threadpool(self._texts, await request.body())
            async with self.slots.held():
                try:
                    results, adapter = await self.slots.call(self._categorize, texts)
                except Exception as error:
                    log.exception("the categoriser failed on %d texts", len(texts))
                    raise ServiceError(
                        f"the categoriser failed ({type(error).__name__}: {error}); see the server log",
                        500,
                        "categorizer_error",
                    ) from error
        except ServiceError as error:
            headers = busy_headers(error)
            return plain_error_response(request.url.path, error.status, error.message, error.code, headers)
        return JSONResponse(
            {"results": [result_body(result) for result in results], "model": self.model, "adapter": adapter}
        )

    def _texts(self, body: bytes) -> list[str]:
        texts = json_object(body).get("texts")
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            raise ServiceError('send {"texts": ["titulo. resumen", ...]}: a list of strings')
        if len(texts) > self.settings.max_texts:
            raise ServiceError(f"{len(texts)} texts in one request: send at most {self.settings.max_texts}")
        return texts

    async def status(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "backend": self.backend,
                "model": self.model,
                "device": self.device,
                "categories": list(self.categorizer.categories),
                "adapter": self.adapter(),
                "started_at": self.started_at.isoformat(timespec="seconds"),
                "uptime_s": round(time.monotonic() - self._started, 1),
                "max_waiting": self.settings.max_waiting,
                "max_texts": self.settings.max_texts,
                "requests": self.counts.report(),
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def create_app(
    categorizer: LocalCategorizerResource, token: str | None, settings: ServerSettings | None = None
) -> Starlette:
    """The ASGI app around `categorizer`, which the model's thread loads when the app starts. `token` None serves
    without authentication."""
    settings = settings or ServerSettings()
    service = CategorizerService(categorizer, settings)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/status", service.status, methods=["GET"]),
        Route(CATEGORIZE_PATH, service.categorize, methods=["POST"]),
    ]
    rules = GateRules(
        token_variable=TOKEN_VARIABLE, counted_paths=frozenset({CATEGORIZE_PATH}), body_limit=settings.max_body_bytes
    )
    app = gated_app(routes, service.counts, token, rules, service.lifespan)
    app.state.service = service
    return app


def start_server(
    host: str,
    port: int,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    no_auth: bool = False,
) -> None:
    """What `newsllm categorizer-server` does: check the token, load the site's categoriser once (NEWSLLM_BACKEND
    and the other NEWSLLM_* settings; `model`, `adapter`, `device` win over them), serve until interrupted."""
    token = token_from_environment(TOKEN_VARIABLE, no_auth)
    start_logging(token, host, port)
    if setting("BACKEND") == "remote":
        raise ValueError(
            "NEWSLLM_BACKEND=remote is the client of this server: start the server with a backend that loads the "
            "model ('transformers' or 'exllamav2')"
        )
    categorizer = categorizer_from_settings(resolve_now=True, model_dir=model, adapter_dir=adapter, device=device)
    log.info("loading the categoriser from %s ...", categorizer.model_dir)
    serve(create_app(categorizer, token), host, port)
