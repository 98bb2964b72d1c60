"""A service's ASGI app: its routes behind the request gate, with errors in the service's own shape."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from .gate import GateRules, RequestCounts, RequestGate

log = logging.getLogger(__name__)


def gated_app(routes: list[Route], counts: RequestCounts, token: str | None, rules: GateRules, lifespan) -> Starlette:
    """Starlette serving `routes` behind a `RequestGate`. `token` None serves without authentication. A path or
    method it does not serve is a 4xx in the service's error shape; a bug is a 500 with the traceback in the log
    only."""
    if token is not None and not token.strip():
        raise ValueError("the token is empty: set a real token, or pass None to serve without authentication")

    async def http_error(request: Request, error: HTTPException):
        code = "not_found" if error.status_code == 404 else "invalid_request"
        return rules.error_response(request.url.path, error.status_code, str(error.detail), code, None)

    async def unexpected_error(request: Request, error: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        message = "internal server error; see the server log"
        return rules.error_response(request.url.path, 500, message, "internal_error", None)

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestGate, counts=counts, token=token, rules=rules)],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        lifespan=lifespan,
    )
