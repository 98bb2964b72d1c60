"""How the vision server says no: one exception for every refused request, and the two APIs' error bodies."""

from __future__ import annotations

from starlette.responses import JSONResponse


class ServiceError(Exception):
    """A request the server answers with an error: 4xx for the client's input, 5xx for its own failures."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def error_response(path: str, status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1/, the original API's `{"success": false, "error": ...}` elsewhere."""
    if path.startswith("/v1/"):
        kind = {401: "authentication_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "code": code}}
    else:
        body = {"success": False, "error": message}
    return JSONResponse(body, status_code=status, headers=headers)
