"""Around every HTTP request: the bearer token, the body size, the request counts and one log line.

`RequestCounts` is the one place requests are counted: the gate counts them in and out, the service counts
those waiting for and holding a describer slot, and `/status` reports them."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from starlette.datastructures import Headers

from .errors import error_response
from .uploads import MB

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/health"})
DESCRIBE_PATHS = frozenset({"/analyze", "/analyze_base64", "/v1/chat/completions"})


@dataclass
class RequestCounts:
    """Description requests that passed authentication, refused tokens, and the describer slots' use. Touched
    only on the event loop's thread."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    waiting: int = 0  # for a describer slot
    running: int = 0  # describer calls now
    peak_running: int = 0
    latency_s: float = 0.0  # summed over the succeeded ones

    def admitted(self) -> None:
        self.total += 1
        self.in_flight += 1

    def answered(self, status: int, seconds: float) -> None:
        self.in_flight -= 1
        if 200 <= status < 400:
            self.succeeded += 1
            self.latency_s += seconds
        else:
            self.failed += 1

    def refused(self) -> None:
        self.unauthorized += 1

    @contextlib.contextmanager
    def waiting_for_slot(self) -> Iterator[None]:
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    @contextlib.contextmanager
    def describing(self) -> Iterator[None]:
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            yield
        finally:
            self.running -= 1

    def report(self) -> dict:
        """The counts as `/status` shows them."""
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "unauthorized": self.unauthorized,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "running": self.running,
            "peak_running": self.peak_running,
            "mean_latency_ms": round(1000 * self.latency_s / self.succeeded, 1) if self.succeeded else None,
        }


class _BodyTooLarge(Exception):
    pass


class RequestGate:
    """ASGI middleware: the bearer token (all paths but the open ones), the body size (at most `body_limit`
    bytes, for images up to `upload_limit`), the counts of description requests, and one log line with method,
    path, status and milliseconds (never headers)."""

    def __init__(self, app, counts: RequestCounts, token: str | None, body_limit: int, upload_limit: int):
        self.app, self.counts = app, counts
        self.body_limit, self.upload_limit = body_limit, upload_limit
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
            if status == 401:
                self.counts.refused()
            elif counted:
                self.counts.answered(status, seconds)

    async def _guarded(self, scope, receive, send, counted: bool):
        headers, path = Headers(scope=scope), scope["path"]
        if self._token is not None and path not in OPEN_PATHS:
            problem = self._token_problem(headers.get("authorization"))
            if problem:
                response = error_response(path, 401, problem, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if counted:
            self.counts.admitted()
        limit = self.body_limit
        too_large = error_response(
            path,
            413,
            f"the request is larger than {limit / MB:.1f} MB (images up to {self.upload_limit / MB:.3g} MB)",
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
