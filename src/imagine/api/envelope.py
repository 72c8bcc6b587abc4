"""The response envelope and the handlers that make every error one.

Success: `{"code": 200, "message": "success", "data": …}`. Error:
`{"code": <status>, "message": …, "error": <CODE>}`. FastAPI's 422s,
Starlette's HTML/plain errors and unexpected exceptions all end up here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from imagine.api.security import SECURITY_HEADERS
from imagine.api.text import TEXT_ERROR, TEXT_RULE, scrub
from imagine.db.unavailable import database_unavailable
from imagine.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from imagine.observability import logs

log = logging.getLogger("imagine.api")


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson (several times faster than the standard library),
    with the security headers every answer carries."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:
            # Text stored before requests were held to `Text` may hold lone
            # surrogates; show it with U+FFFD rather than fail every read of it.
            return orjson.dumps(scrub(content))

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        super().init_headers(headers)
        self.raw_headers.extend(SECURITY_HEADERS)


def success(data: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return FastJSONResponse({"code": 200, "message": "success", "data": data}, headers=headers)


def error_response(exc: ApiError) -> JSONResponse:
    return FastJSONResponse(
        {"code": exc.status, "message": exc.message, "error": exc.error},
        status_code=exc.status,
        headers=exc.headers,
    )


def unexpected(exc: BaseException, where: str) -> ApiError:
    """What a client sees of an exception nothing planned for: 503 while the
    database is out of reach (worth retrying), otherwise a logged 500."""
    if database_unavailable(exc):
        log.warning("database unavailable on %s: %s", where, exc)
        return ServiceUnavailable(
            "The service is temporarily unavailable, please retry shortly",
            headers={"Retry-After": "1"},
        )
    request_id = logs.request_id()
    log.error("unhandled error (request %s) on %s", request_id, where, exc_info=exc)
    return InternalError(f"Internal server error (request id {request_id})")


def validation_message(exc: RequestValidationError) -> str:
    """One sentence for the first problem pydantic found, naming the parameter."""
    errors = exc.errors()
    if not errors:
        return "The request body is invalid"
    # A string that is not text is named even when a union (`images`) also
    # reports its other branch; the union's branch labels are not parameter names.
    first = next((error for error in errors if error.get("type") == TEXT_ERROR), errors[0])
    kind = first.get("type", "")
    loc = [
        str(part)
        for part in first.get("loc", ())
        if part not in ("body", "query", "header", "path")
        and (isinstance(part, int) or str(part).isidentifier())
    ]
    if kind == "json_invalid":
        return "The request body is not valid JSON"
    if not loc:
        return "The request body must be a JSON object"
    name = loc[0] + "".join(f"[{part}]" for part in loc[1:])
    if kind == "missing":
        return f"The {name} parameter is required"
    if kind == "extra_forbidden":
        return f"Unknown parameter: {name}"
    if kind == TEXT_ERROR:
        return f"The {name} parameter must be {TEXT_RULE}"
    expected = {
        "string_type": "a string",
        "int_type": "an integer",
        "bool_type": "true or false",
        "list_type": "a list",
    }.get(kind)
    if expected is None and loc[0] == "images":
        expected = "a string or a list of strings"
    return f"The {name} parameter must be {expected or 'valid'}"


def install_error_handlers(
    app: FastAPI, render: Callable[[ApiError], Response] = error_response
) -> None:
    """Every error `app` can raise, answered by `render`: the envelope, or a
    foreign face's own error shape (`imagine.compat.openai_videos`)."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return render(InvalidRequest(validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        mapped: ApiError
        if exc.status_code == 404:
            mapped = NotFound("Not found")
        elif exc.status_code == 405:
            mapped = MethodNotAllowed("Method not allowed")
        elif exc.status_code == 413:
            mapped = PayloadTooLarge("Request body too large")
        elif 400 <= exc.status_code < 500:
            mapped = InvalidRequest(str(exc.detail))
        else:
            mapped = InternalError("Internal server error")
        return render(mapped)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return render(unexpected(exc, f"{request.method} {request.url.path}"))


def document_errors_as_envelopes(app: FastAPI) -> None:
    """Drop FastAPI's automatic 422 responses from the OpenAPI document: this API
    answers bad input with a 400 envelope (documented per route), never a 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
