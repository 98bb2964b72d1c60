"""Starting a service: its bearer token from the environment, and uvicorn in the foreground (the `newsllm`
commands), in a background thread, or a server command as a process of its own (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

from starlette.applications import Starlette

log = logging.getLogger(__name__)


def token_from_environment(variable: str, no_auth: bool) -> str | None:
    """The bearer token from `variable`; without one the server only starts when told `no_auth`."""
    token = os.environ.get(variable, "").strip()
    if no_auth:
        return None
    if not token:
        raise ValueError(
            f"{variable} is not set: set it to a secret token (e.g. `export {variable}=$(openssl rand "
            "-hex 24)`), or pass --no-auth to serve without authentication on a trusted network"
        )
    return token


def start_logging(token: str | None, host: str, port: int) -> None:
    """Log to stderr through the standard logging module, warning first when the server takes no token."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token is None:
        log.warning(
            "serving WITHOUT authentication (--no-auth): anyone who reaches %s:%d can use the model", host, port
        )


def serve(app: Starlette, host: str, port: int) -> None:
    """Run `app` until interrupted (after `start_logging`)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@contextlib.contextmanager
def running_in_thread(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a background thread (port 0: a free one) and yield its base URL; stopped on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="http-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_in_process(
    command: list[str], port: int, host: str = "127.0.0.1", timeout_s: float = 300, **popen
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run a server `command` that serves on `port`, wait until its `/health` answers, and yield its base URL and
    process; terminated on exit. `popen`: `env`, `stdout`, `stderr`… of `subprocess.Popen`."""
    import requests

    process = subprocess.Popen(command, **popen)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                requests.get(f"{url}/health", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start serving on {host}:{port}") from None
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
