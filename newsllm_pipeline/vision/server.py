"""Starting the vision server: the token from the environment, the describer loaded once through the pipeline's
describer resources, and uvicorn (in the foreground for `newsllm vision-server`, or in a thread for tests and
benchmarks). The app itself is `app.create_app`."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

from starlette.applications import Starlette

from ..documents.descriptions import PictureDescriber
from .app import create_app
from .service import ServerSettings
from .uploads import MB

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "NEWSLLM_VISION_TOKEN"
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
