"""What `/openapi.json` shows of each operation: an example of the request and
of every answer it documents, the success and the main errors.

Error examples are rendered from the error classes themselves (`imagine.errors`),
so a documented code can never drift from the one the server sends.
"""

from __future__ import annotations

from typing import Any

from fastapi.openapi.models import Example
from pydantic import BaseModel

from imagine.errors import ApiError, InternalError, RateLimited, Unauthorized


class ErrorEnvelope(BaseModel):
    code: int
    message: str
    error: str


Responses = dict[int | str, dict[str, Any]]

# Any `/v1` request may meet the gate (key, rate limit) or an unexpected fault.
GATE_ERRORS: tuple[ApiError, ...] = (
    Unauthorized(),
    RateLimited("Rate limit of 100 requests per minute exceeded"),
    InternalError("Internal server error (request id 3f9a0c1d2b4e5f60)"),
)


def envelope(data: Any) -> dict[str, Any]:
    """A success answer as the client receives it."""
    return {"code": 200, "message": "success", "data": data}


def error_example(error: ApiError) -> dict[str, Any]:
    return {"code": error.status, "message": error.message, "error": error.error}


def answers(success: Any, *errors: ApiError, gate: bool = True) -> Responses:
    """The `responses=` of a route: `success` is the example `data` of a 200, and
    each error (plus the gate's, for `/v1` routes) an example of its status.
    Two errors with one status (409 `IDEMPOTENCY_CONFLICT`, 409 `TASK_FINISHED`)
    become two named examples."""
    documented: Responses = {
        200: {
            "description": "Success",
            "content": {"application/json": {"example": envelope(success)}},
        }
    }
    by_status: dict[int, list[ApiError]] = {}
    for error in (*errors, *(GATE_ERRORS if gate else ())):
        by_status.setdefault(error.status, []).append(error)
    for status, group in sorted(by_status.items()):
        media: dict[str, Any]
        if len(group) == 1:
            media = {"example": error_example(group[0])}
        else:
            media = {
                "examples": {
                    error.error: {"summary": error.error, "value": error_example(error)}
                    for error in group
                }
            }
        documented[status] = {
            "model": ErrorEnvelope,
            "description": " or ".join(sorted({error.error for error in group})),
            "content": {"application/json": media},
        }
    return documented


def examples(value: Any, summary: str = "Example", **more: Any) -> dict[str, Example]:
    """`openapi_examples=` of a body or parameter: `value`, and any named others."""
    found: dict[str, Example] = {"example": Example(summary=summary, value=value)}
    for name, other in more.items():
        found[name] = Example(summary=name.replace("_", " "), value=other)
    return found
