"""`GET /v1/tasks/{task_id}/deliveries`: what happened to a task's webhooks, attempt by attempt."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.tasks import service as tasks
from imagine.tasks.endpoints import ERRORS, bearer
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
    "code": 200,
    "message": "success",
    "data": {
        "task_id": "task_6b1f…",
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
    },
}


@router.get(
    "/tasks/{task_id}/deliveries",
    response_model=DeliveriesEnvelope,
    responses={**ERRORS, 200: {"content": {"application/json": {"example": EXAMPLE}}}},
)
async def deliveries(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    task_id: Annotated[Text, Path(description="The id returned by /v1/generate")],
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
