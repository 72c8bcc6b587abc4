"""HTTP routes of the contract: `POST /v1/generate` and `GET /v1/status`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.services import Services, principal, services
from imagine.errors import InvalidRequest
from imagine.tasks import service
from imagine.tasks.schemas import GenerateBody, validate_generation

# Documents the scheme in OpenAPI; `V1Gate` does the checking.
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
router = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], tags=["video"])


class ErrorEnvelope(BaseModel):
    code: int
    message: str
    error: str


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


class TaskEnvelope(BaseModel):
    code: int = 200
    message: str = "success"
    data: TaskData


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope} for status in (400, 401, 402, 404, 409, 413, 429, 500)
}


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest("The Idempotency-Key header must be 1-255 printable characters")
    return value


@router.post("/generate", response_model=SubmitEnvelope, responses=ERRORS)
async def generate(
    body: GenerateBody,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Submit a text- or image-to-video task; costs the configured credits (40)."""
    request = validate_generation(body, svc.settings, svc.engine.capabilities)
    task_id = await service.submit(
        svc.db, caller, request, svc.submit_policy, _idempotency_key(idempotency_key)
    )
    svc.wakeup.set()
    return success({"task_id": task_id})


@router.get("/status", response_model=TaskEnvelope, responses=ERRORS)
async def status(
    http_request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    task_id: Annotated[str, Query(description="The id returned by /v1/generate")],
) -> JSONResponse:
    """A task's state; `response` lists the video URLs once it is completed."""
    task = await service.get_task(svc.db, caller, task_id)
    base_url = svc.base_url(http_request)
    return success(service.status_view(task, lambda key: svc.storage.url(key, base_url)))
