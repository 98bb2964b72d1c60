"""Starting the vision server: the token from the environment, the describer loaded once through the pipeline's
describer resources, and uvicorn (`serving.server`). The app itself is `app.create_app`."""

from __future__ import annotations

import logging
import os

from ..documents.descriptions import PictureDescriber
from ..serving.gate import MB
from ..serving.server import serve, start_logging, token_from_environment
from .app import TOKEN_VARIABLE, create_app
from .service import ServerSettings

log = logging.getLogger(__name__)

SERVED_BACKENDS = ("ocr", "transformers")  # those that describe a picture in memory (`describe_picture`)


def load_describer(backend: str, **fields) -> PictureDescriber:
    """The describer the server holds, built by the pipeline's resource for `backend`: `ocr` (RapidOCR, offline)
    or `transformers` (a local VLM folder: `model`, `device`, `max_new_tokens`, `load_in_8bit`)."""
    import dagster as dg

    from ..resources.documents import describer_resource

    if backend not in SERVED_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {' or '.join(map(repr, SERVED_BACKENDS))}")
    try:
        return describer_resource(backend, **fields).describer()
    except dg.Failure as error:
        raise ValueError(error.description) from error


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
    token = token_from_environment(TOKEN_VARIABLE, no_auth)
    start_logging(token, host, port)
    log.info("loading the %s describer%s ...", backend, f" from {model}" if model else "")
    describer = load_describer(
        backend, model=model, device=device, load_in_8bit=load_in_8bit, max_new_tokens=max_new_tokens
    )
    settings = ServerSettings(
        backend=backend,
        model=describer.name,
        device=getattr(describer, "device", "cpu"),
        max_concurrency=max_concurrency or default_concurrency(backend),
        max_upload_bytes=max_upload_bytes,
        max_side=max_side,
    )
    serve(create_app(describer, token, settings), host, port)
