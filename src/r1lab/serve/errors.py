"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Validation errors are 400 (not FastAPI's 422), unknown paths 404, and anything unexpected a 500 in the
same shape (the fuzz tests make sure that never happens for any input).
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("r1lab.serve")


class APIError(Exception):
    """An error the client should see, in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def error_response(err: APIError) -> Response:
    # ensure_ascii: a message may quote client text, which can hold lone surrogates that UTF-8 cannot encode
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return Response(json.dumps(err.body(), ensure_ascii=True), status_code=err.status,
                    media_type="application/json", headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return error_response(APIError(400, "We could not parse the JSON body of your request: "
                                           f"{first.get('ctx', {}).get('error', 'invalid JSON')}"))
        if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return error_response(APIError(400, "The request body must be a JSON object."))
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(APIError(404, f"Unknown path {request.method} {request.url.path}", code="not_found"))
        return error_response(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}"))
