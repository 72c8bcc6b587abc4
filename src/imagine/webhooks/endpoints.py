"""`POST /v1/webhooks/secret` (the account's signing secret) and
`GET /v1/tasks/{task_id}/deliveries` (what happened to a task's webhooks,
attempt by attempt)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool

from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.openapi import answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.errors import Forbidden, InvalidRequest, WebhookSecretExists
from imagine.tasks import service as tasks
from imagine.tasks.endpoints import TASK_ID, UNKNOWN_TASK, bearer
from imagine.webhooks import service

router = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], tags=["webhooks"])


class AttemptData(BaseModel):
    attempted_at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryData(BaseModel):
    webhook_id: str
    type: str
    status: str
    attempt_count: int
    created_at: str
    next_attempt_at: str | None
    delivered_at: str | None
    attempts: list[AttemptData]


class DeliveriesData(BaseModel):
    task_id: str
    callback_url: str | None
    deliveries: list[DeliveryData]


class DeliveriesEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: DeliveriesData


EXAMPLE = {
    "task_id": TASK_ID,
    "callback_url": "https://example.com/hooks/imagine",
    "deliveries": [
        {
            "webhook_id": "msg_2c9e…",
            "type": "task.completed",
            "status": "delivered",
            "attempt_count": 2,
            "created_at": "2026-11-25T20:00:00Z",
            "next_attempt_at": None,
            "delivered_at": "2026-11-25T20:00:05Z",
            "attempts": [
                {
                    "attempted_at": "2026-11-25T20:00:00Z",
                    "status_code": 503,
                    "error": None,
                    "duration_ms": 41,
                },
                {
                    "attempted_at": "2026-11-25T20:00:05Z",
                    "status_code": 200,
                    "error": None,
                    "duration_ms": 38,
                },
            ],
        }
    ],
}


class SecretBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rotate: StrictBool = False


@router.post(
    "/webhooks/secret",
    responses=answers(
        {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwJf3kT0b6N1c=", "rotated": False},
        WebhookSecretExists(
            "The account already has a webhook signing secret, and it is never shown again; "
            'send {"rotate": true} to replace it (receivers must switch to the new one)'
        ),
        InvalidRequest("The rotate parameter must be true or false"),
        Forbidden("A test key cannot create or rotate the webhook signing secret"),
    ),
)
async def create_secret(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    body: Annotated[
        SecretBody | None,
        Body(openapi_examples=examples({}, "The first secret", rotate={"rotate": True})),
    ] = None,
) -> JSONResponse:
    """Create the account's webhook signing secret (needed before a `callback_url`
    is accepted), or replace it with `{"rotate": true}`: deliveries are signed
    with the new one at once. The secret is in this answer only; it is stored
    encrypted. A live key is needed."""
    rotate = body is not None and body.rotate
    secret = await service.create_own_secret(svc.db, caller, rotate=rotate, box=svc.webhook_secrets)
    return success({"secret": secret, "rotated": rotate})


@router.get(
    "/tasks/{task_id}/deliveries",
    response_model=DeliveriesEnvelope,
    responses=answers(EXAMPLE, UNKNOWN_TASK),
)
async def deliveries(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    task_id: Annotated[
        Text,
        Path(description="The id returned by /v1/generate", openapi_examples=examples(TASK_ID)),
    ],
) -> JSONResponse:
    """The webhook messages sent for a task (one when it ends with a `callback_url`)
    and every attempt to deliver each: HTTP status or error, and how long it took.
    `status` is `pending` (next try at `next_attempt_at`), `delivering`,
    `delivered` or `failed`."""
    task = await tasks.get_task(svc.db, caller, task_id)
    return success(
        {
            "task_id": task["id"],
            "callback_url": task["callback_url"],
            "deliveries": await service.deliveries(svc.db, task["id"]),
        }
    )
