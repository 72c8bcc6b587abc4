"""HTTP routes for tasks: the contract's `generate` and `status`, plus `cancel` and `tasks`."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import Scope

from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.fastpath import FastHandler
from imagine.api.openapi import answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text, is_text
from imagine.errors import (
    Conflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TaskFinished,
)
from imagine.observability import logs
from imagine.tasks import service
from imagine.tasks.actions import TEST_OUTCOME_NAMES, submit_with_headers, task_view
from imagine.tasks.schemas import GenerateBody

# Documents the scheme in OpenAPI; `V1Gate` does the checking.
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
router = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], tags=["video"])


class SubmitData(BaseModel):
    task_id: str


class SubmitEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: SubmitData


class TaskData(BaseModel):
    consumed_credits: int
    created_at: str
    status: str
    task_id: str
    error_message: str | None
    request: dict[str, Any]
    response: list[str]
    progress: int
    updated_at: str
    engine: str
    cancel_requested: bool
    test: bool
    queue_position: int | None = None
    eta_seconds: int | None = None


class TaskEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: TaskData


# -- what /openapi.json shows ------------------------------------------------------

TASK_ID = "task_6b1f2c9e0a4d8e7f5a3b1c2d"
TASK_EXAMPLE: dict[str, Any] = {
    "consumed_credits": 40,
    "created_at": "2026-11-25T20:00:00Z",
    "status": "completed",
    "task_id": TASK_ID,
    "error_message": None,
    "request": {
        "mode": "fun",
        "prompt": "a beautiful landscape with mountains",
        "ratio": "1:1",
        "duration": 6,
        "resolution": "480p",
        "seed": None,
    },
    "response": [
        f"https://imagine.example.com/files/{TASK_ID}/4c1e9a77.mp4"
        "?expires=1764108000&signature=9f2c…"
    ],
    "progress": 100,
    "updated_at": "2026-11-25T20:00:41Z",
    "engine": "preview",
    "cancel_requested": False,
    "test": False,
}
PENDING_EXAMPLE = {
    **TASK_EXAMPLE,
    "status": "pending",
    "response": [],
    "progress": 0,
    "updated_at": "2026-11-25T20:00:00Z",
    "queue_position": 3,
    "eta_seconds": 95,
}
GENERATE_EXAMPLE = {
    "mode": "fun",
    "prompt": "a beautiful landscape with mountains",
    "images": ["https://example.com/image.png"],
    "ratio": "1:1",
}
UNKNOWN_TASK = NotFound("Task not found")


@router.post(
    "/generate",
    response_model=SubmitEnvelope,
    responses=answers(
        {"task_id": TASK_ID},
        InvalidRequest("The prompt parameter is required"),
        InsufficientCredits("Insufficient credits: this generation costs 40 credits"),
        Conflict("This Idempotency-Key was already used with a different request"),
        PayloadTooLarge("Request body larger than 97962648 bytes"),
    ),
)
async def generate(
    body: Annotated[
        GenerateBody,
        Body(
            openapi_examples=examples(
                GENERATE_EXAMPLE,
                "Image to video",
                text_to_video={"prompt": "a lighthouse at dusk", "duration": 10},
                with_webhook={
                    "prompt": "a lighthouse at dusk",
                    "callback_url": "https://example.com/hooks/imagine",
                },
            )
        ),
    ],
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-255 printable characters; a retry with the same key and body "
            "returns the same task, charged once",
            openapi_examples=examples("6f1c0a5e-8d2b-4c1e-9a77-0b3f5d2e4c19"),
        ),
    ] = None,
    test_outcome: Annotated[
        str | None,
        Header(
            alias="Imagine-Test-Outcome",
            description="Test keys only: " + " | ".join(TEST_OUTCOME_NAMES),
            openapi_examples=examples("network"),
        ),
    ] = None,
) -> JSONResponse:
    """Submit a text- or image-to-video task; costs the configured credits (40)."""
    return await _accept(svc, caller, body, idempotency_key, test_outcome)


async def _accept(
    svc: Services,
    caller: Principal,
    body: GenerateBody,
    idempotency_key: str | None,
    test_outcome: str | None,
) -> JSONResponse:
    task_id = await submit_with_headers(svc, caller, body, idempotency_key, test_outcome)
    return success({"task_id": task_id})


_SUBMIT_HEADERS = {
    b"content-type": "content_type",
    b"idempotency-key": "idempotency_key",
    b"imagine-test-outcome": "test_outcome",
}


async def generate_fast(svc: Services, scope: Scope, body: bytes) -> Response | None:
    """`generate` without the framework (see `imagine.api.fastpath`) for a JSON
    body that passes the model; anything else goes to the route."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:  # ASGI header names are lower-case
        field = _SUBMIT_HEADERS.get(name)
        if field is not None:
            if field in found:
                return None
            found[field] = value.decode("latin-1")
    media_type = found.get("content_type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return None
    try:
        payload = GenerateBody.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
    return await _accept(
        svc,
        scope["state"]["principal"],
        payload,
        found.get("idempotency_key"),
        found.get("test_outcome"),
    )


async def status_fast(svc: Services, scope: Scope, body: bytes) -> Response | None:
    """`status` without the framework for `?task_id=…` given once."""
    query: bytes = scope["query_string"]
    if query.startswith(b"task_id=") and not any(mark in query for mark in _NEEDS_PARSING):
        task_id = query[8:].decode("latin-1")  # what the full parse below gives for such a query
    else:
        values = QueryParams(query).getlist("task_id")
        if len(values) != 1 or not is_text(values[0]):
            return None
        task_id = values[0]
    logs.bind(task_id=task_id[:80])
    task = await service.get_task(svc.db, scope["state"]["principal"], task_id)
    return success(await task_view(svc, task, lambda: svc.base_url(Request(scope))))


_NEEDS_PARSING = (b"&", b"%", b"+")


def fast_handlers(svc: Services) -> dict[tuple[str, str], FastHandler]:
    return {
        ("POST", "/v1/generate"): partial(generate_fast, svc),
        ("GET", "/v1/status"): partial(status_fast, svc),
    }


@router.get(
    "/status",
    response_model=TaskEnvelope,
    responses=answers(
        TASK_EXAMPLE, InvalidRequest("The task_id parameter is required"), UNKNOWN_TASK
    ),
)
async def status(
    http_request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    task_id: Annotated[
        Text,
        Query(description="The id returned by /v1/generate", openapi_examples=examples(TASK_ID)),
    ],
) -> JSONResponse:
    """A task's state; `response` lists the video URLs once it is completed.

    The ordinary request is answered by `status_fast` with the same `task_view`."""
    logs.bind(task_id=task_id[:80])
    task = await service.get_task(svc.db, caller, task_id)
    return success(await task_view(svc, task, lambda: svc.base_url(http_request)))


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: Text


@router.post(
    "/cancel",
    response_model=TaskEnvelope,
    responses=answers(
        {**PENDING_EXAMPLE, "status": "cancelled", "consumed_credits": 0},
        InvalidRequest("The task_id parameter is required"),
        UNKNOWN_TASK,
        TaskFinished("Task is already completed; nothing to cancel"),
    ),
)
async def cancel(
    body: Annotated[CancelBody, Body(openapi_examples=examples({"task_id": TASK_ID}))],
    http_request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
) -> JSONResponse:
    """Cancel a task and refund it. A pending task is `cancelled` at once; a
    processing one is stopped within seconds (`cancel_requested` until then);
    a finished one answers 409 `TASK_FINISHED`."""
    logs.bind(task_id=body.task_id[:80])
    task = await service.cancel(svc.db, caller, body.task_id, svc.inputs)
    return success(await task_view(svc, task, lambda: svc.base_url(http_request)))


class TaskListData(BaseModel):
    tasks: list[TaskData]
    has_more: bool
    next_after: str | None


class TaskListEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: TaskListData


@router.get(
    "/tasks",
    response_model=TaskListEnvelope,
    responses=answers(
        {"tasks": [TASK_EXAMPLE], "has_more": True, "next_after": TASK_ID},
        InvalidRequest("The after parameter must be a task id from a previous page"),
    ),
)
async def list_tasks(
    http_request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    status: Annotated[
        Literal["pending", "processing", "completed", "failed", "cancelled"] | None,
        Query(openapi_examples=examples("completed")),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, openapi_examples=examples(20))] = 20,
    after: Annotated[
        Text | None,
        Query(description="next_after of the previous page", openapi_examples=examples(TASK_ID)),
    ] = None,
) -> JSONResponse:
    """The caller's tasks, newest first, in pages (test keys see only test tasks)."""
    page = await service.list_tasks(svc.db, caller, status=status, limit=limit, after=after)
    base_url = svc.base_url(http_request)
    views = [
        service.status_view(task, lambda key: svc.storage.url(key, base_url)) for task in page.tasks
    ]
    next_after = page.tasks[-1]["id"] if page.has_more else None
    return success({"tasks": views, "has_more": page.has_more, "next_after": next_after})
