"""Around every HTTP request: the bearer token, the body size, the request counts and one log line.

`RequestCounts` is the one place a service's requests are counted: the gate counts them in and out, the call
slots count those waiting for and holding a slot, and `/status` reports them."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import Response

from .errors import plain_error_response

log = logging.getLogger(__name__)

MB = 1024 * 1024

# (path, status, message, code, headers) -> the service's error body
ErrorResponse = Callable[[str, int, str, str, dict | None], Response]


@dataclass
class RequestCounts:
    """Model requests that passed authentication, refused tokens, and the model slots' use. Touched only on the
    event loop's thread."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    unauthorized: int = 0
    in_flight: int = 0
    waiting: int = 0  # for a model slot
    running: int = 0  # model calls now
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
    def running_call(self) -> Iterator[None]:
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


@dataclass(frozen=True)
class GateRules:
    """What a service's gate lets through and counts, and how it says no."""

    token_variable: str  # named in the 401 message: where the server's token comes from
    counted_paths: frozenset[str]  # POST requests to these are model requests (counted)
    open_paths: frozenset[str] = frozenset({"/health"})  # no token needed
    body_limit: int = MB
    too_large: str | None = None  # the 413 message; default: the body limit in MB
    error_response: ErrorResponse = plain_error_response


class RequestGate:
    """ASGI middleware: the bearer token (all paths but the open ones), the body size (at most `body_limit`
    bytes), the counts of model requests, and one log line with method, path, status and milliseconds (never
    headers)."""

    def __init__(self, app, counts: RequestCounts, token: str | None, rules: GateRules):
        self.app, self.counts, self.rules = app, counts, rules
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

        counted = scope["method"] == "POST" and path in self.rules.counted_paths
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
        headers, path, rules = Headers(scope=scope), scope["path"], self.rules
        if self._token is not None and path not in rules.open_paths:
            problem = self._token_problem(headers.get("authorization"))
            if problem:
                response = rules.error_response(path, 401, problem, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        if counted:
            self.counts.admitted()
        limit = rules.body_limit
        message = rules.too_large or f"the request is larger than {limit / MB:.1f} MB"
        too_large = rules.error_response(path, 413, message, "request_too_large", None)
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
            return (
                "missing token: send the header `Authorization: Bearer <token>` "
                f"(the server's {self.rules.token_variable})"
            )
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "malformed Authorization header: send `Authorization: Bearer <token>`"
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            return "invalid token"
        return None
