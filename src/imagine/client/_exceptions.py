"""Every error the SDK raises, in one tree under `ImagineError`.

Grouped by cause so callers can catch as broadly or as narrowly as they need:

    ImagineError
    ├── UsageError (also ValueError)       the call was refused before anything was sent
    │   └── MissingAPIKey
    ├── APIError                           the server answered with an error status
    │   ├── InvalidRequest                 400 INVALID_REQUEST
    │   │   └── PayloadTooLarge            413 PAYLOAD_TOO_LARGE
    │   ├── Unauthorized                   401 UNAUTHORIZED
    │   ├── InsufficientCredits            402 INSUFFICIENT_CREDITS
    │   ├── Forbidden                      403 FORBIDDEN (a valid key, not allowed to do this)
    │   ├── NotFound                       404 NOT_FOUND
    │   ├── Conflict                       409 IDEMPOTENCY_CONFLICT
    │   │   └── TaskFinished               409 TASK_FINISHED (cancel of an ended task)
    │   ├── RateLimited                    429 RATE_LIMITED (retry_after, reset_at)
    │   ├── ServerError                    5xx
    │   └── UnexpectedResponse             a success status without what the contract says
    ├── APIConnectionError (also ConnectionError)   no answer: refused, reset, DNS, TLS
    │   └── APITimeoutError (also TimeoutError)
    ├── TaskFailed                         the task ended failed or cancelled
    └── WaitTimeout (also TimeoutError)    `wait` gave up before the task finished

Low-level `httpx` errors are translated once, where a request is sent; they
never reach the caller.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from imagine.client._models import Task


class ImagineError(Exception):
    """Base of every error the SDK raises."""


class UsageError(ImagineError, ValueError):
    """The call cannot be sent as given (a bad argument, an unreadable image); nothing was sent."""


class MissingAPIKey(UsageError):
    """No API key was passed and `IMAGINE_API_KEY` is not set."""


class APIError(ImagineError):
    """The server answered with an error status.

    `code` is the envelope's machine-readable `error` (None when the body was
    not the envelope, e.g. a proxy's HTML page); `message` its human sentence.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status}{f' {self.code}' if self.code else ''})"


class InvalidRequest(APIError):
    """400: a missing or invalid parameter; fix the request, retrying will not help."""


class PayloadTooLarge(InvalidRequest):
    """413: the request body is over the server's limit (usually inline images)."""


class Unauthorized(APIError):
    """401: the API key is missing, malformed, unknown or revoked."""


class InsufficientCredits(APIError):
    """402: the account's balance is below the cost of a generation."""


class Forbidden(APIError):
    """403: the key is valid but may not do this (an admin route, or a test key
    reaching for live keys or the webhook signing secret)."""


class NotFound(APIError):
    """404: no such task for this key's account (another account's task looks the same)."""


class Conflict(APIError):
    """409: the request conflicts with what the server already has (by default: the
    Idempotency-Key was already used with a different request)."""


class TaskFinished(Conflict):
    """409 TASK_FINISHED: the task to cancel had already ended, so nothing changed.

    `task_id` is the task the cancel named. The task may have completed, failed,
    or been cancelled already (by you: a retried cancel whose first attempt
    went through ends here too); `status(task_id)` says which.
    """

    task_id: str | None = None


class RateLimited(APIError):
    """429: over the account's per-minute limit (all its keys share it).

    `retry_after` is how many seconds the server asked to wait; `reset_at` when
    its window has room again. Either may be None if the server did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, headers=headers)
        self.retry_after = retry_after_seconds(self.headers)
        reset = int_header(self.headers, "x-ratelimit-reset")
        self.reset_at = datetime.fromtimestamp(reset, UTC) if reset is not None else None


class ServerError(APIError):
    """5xx: the server (or a proxy in front of it) failed; retried automatically."""


class UnexpectedResponse(APIError):
    """A success status whose body is not what the contract says: not the envelope
    (wrong base URL?), or values no Imagine server sends (a task id that is not
    one, which `download` will not turn into a file name)."""


class APIConnectionError(ImagineError, ConnectionError):
    """No answer from the server: connection refused or reset, DNS or TLS failure."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The server did not answer within the client's timeout."""


class TaskFailed(ImagineError):
    """The task ended `failed` or `cancelled`; its credits were refunded by the server."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.error_message = task.error_message
        super().__init__(f"Task {task.task_id} {task.status}: {task.error_message or 'no reason'}")


class WaitTimeout(ImagineError, TimeoutError):
    """`wait` ran out of time; the task goes on, `task` is what was last seen."""

    def __init__(self, task: Task, timeout: float) -> None:
        self.task = task
        self.timeout = timeout
        super().__init__(f"Task {task.task_id} is still {task.status} after {timeout:g} s")


_BY_CODE: dict[str, type[APIError]] = {
    "INVALID_REQUEST": InvalidRequest,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "UNAUTHORIZED": Unauthorized,
    "INSUFFICIENT_CREDITS": InsufficientCredits,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "IDEMPOTENCY_CONFLICT": Conflict,
    "TASK_FINISHED": TaskFinished,
    "RATE_LIMITED": RateLimited,
    "INTERNAL_ERROR": ServerError,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer: by the envelope's `error`, else by status.

    The status wins when the two disagree about the family (a 5xx is always a
    `ServerError`), so a proxy's page or an odd body still maps sensibly.
    """
    code: str | None = None
    message = ""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error, said = body.get("error"), body.get("message")
        code = error if isinstance(error, str) else None
        message = said if isinstance(said, str) else ""
    if not message:
        text = response.text.strip().splitlines()
        message = text[0][:200] if text else response.reason_phrase or "HTTP error"
    status = response.status_code
    if status >= 500:
        kind: type[APIError] = ServerError
    else:
        kind = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or APIError
        if kind is ServerError:
            kind = _BY_STATUS.get(status) or APIError
    return kind(message, status=status, code=code, headers=response.headers)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """`Retry-After` as seconds from now; it may be a number or an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
