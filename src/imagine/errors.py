"""Errors a client can see. Each carries its HTTP status and contract code.

Services raise these; one handler in `imagine.api.envelope` renders them as
the envelope `{"code", "message", "error"}`. Nothing else reaches a client.
"""

from __future__ import annotations


class ApiError(Exception):
    status: int = 500
    error: str = "INTERNAL_ERROR"
    prefix: str = ""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = f"{self.prefix}{message}"
        self.headers = headers or {}


class InvalidRequest(ApiError):
    status, error, prefix = 400, "INVALID_REQUEST", "Invalid request: "


class Unauthorized(ApiError):
    status, error = 401, "UNAUTHORIZED"

    def __init__(self, message: str = "Missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class InsufficientCredits(ApiError):
    status, error = 402, "INSUFFICIENT_CREDITS"


class Forbidden(ApiError):
    """The key is valid but may not do this (an admin route, a test key reaching
    for live keys)."""

    status, error = 403, "FORBIDDEN"


class NotFound(ApiError):
    status, error = 404, "NOT_FOUND"


class MethodNotAllowed(ApiError):
    status, error = 405, "METHOD_NOT_ALLOWED"


class RequestTimeout(ApiError):
    status, error = 408, "REQUEST_TIMEOUT"


class Conflict(ApiError):
    status, error = 409, "IDEMPOTENCY_CONFLICT"


class TaskFinished(ApiError):
    status, error = 409, "TASK_FINISHED"


class WebhookSecretExists(ApiError):
    status, error = 409, "WEBHOOK_SECRET_EXISTS"


class PayloadTooLarge(ApiError):
    status, error = 413, "PAYLOAD_TOO_LARGE"


class HeadersTooLarge(ApiError):
    status, error = 431, "HEADERS_TOO_LARGE"


class RateLimited(ApiError):
    status, error = 429, "RATE_LIMITED"


class ServiceUnavailable(ApiError):
    status, error = 503, "SERVICE_UNAVAILABLE"


class InternalError(ApiError):
    status, error = 500, "INTERNAL_ERROR"
