"""How a service says no: one exception for every refused request (a body that is not a JSON object among them),
and the plain JSON error body."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse


class ServiceError(Exception):
    """A request the server answers with an error: 4xx for the client's input, 5xx for its own failures."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def plain_error_response(path: str, status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    """`{"error": message, "code": code}`: the error body of a service without an API of its own to imitate."""
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def busy_headers(error: ServiceError) -> dict | None:
    """`Retry-After` on a 503 (the queue was full), which clients such as Docling's honour."""
    return {"Retry-After": "5"} if error.status == 503 else None


def json_object(body: bytes) -> dict:
    """A request body that must be a JSON object; anything else is a 400 with the reason."""
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise ServiceError(f"the body is not valid JSON ({error})") from error
    except RecursionError as error:  # the parser recurses once per nesting level
        raise ServiceError("the body is not valid JSON here: it is nested too deeply") from error
    if not isinstance(payload, dict):
        raise ServiceError("the body must be a JSON object")
    return payload
