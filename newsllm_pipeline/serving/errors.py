"""How a service says no: one exception for every refused request, and the plain JSON error body."""

from __future__ import annotations

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
