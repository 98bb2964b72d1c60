"""The vision server's error bodies: OpenAI's shape under /v1/, the original API's elsewhere (refusals are
`serving.errors.ServiceError`s)."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_response(path: str, status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape under /v1/, the original API's `{"success": false, "error": ...}` elsewhere."""
    if path.startswith("/v1/"):
        kind = {401: "authentication_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "code": code}}
    else:
        body = {"success": False, "error": message}
    return JSONResponse(body, status_code=status, headers=headers)
