"""xAI's REST video routes: `POST /v1/videos/generations` and
`GET /v1/videos/{request_id}`, with xAI's JSON shapes, on our `/v1` (the same
gate, keys, limits and error envelope as every `/v1` route).

The request id is our task id, so a task made here is the same task in
`/v1/status`, `/v1/tasks`, the console and the other faces.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from imagine.accounts.service import Principal
from imagine.api.envelope import FastJSONResponse
from imagine.api.openapi import Responses, answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.compat import xai_mapping
from imagine.compat.xai_mapping import XAI_MODELS, XaiRequest
from imagine.errors import InsufficientCredits, InvalidRequest, NotFound
from imagine.tasks import service
from imagine.tasks.actions import checked_idempotency_key, checked_test_outcome, submit_generation
from imagine.tasks.endpoints import TASK_ID, bearer

router = APIRouter(prefix="/v1/videos", dependencies=[Depends(bearer)], tags=["xAI-compatible"])


class ImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text = Field(description="An http(s) or data:image/…;base64 URL.")


class XaiGenerationBody(BaseModel):
    """xAI's `POST /v1/videos/generations` body (docs/compat.md)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    model: Text | None = Field(default=None, description=" | ".join(XAI_MODELS))
    duration: StrictInt | None = Field(default=None, description="Seconds; default 6.")
    aspect_ratio: Text | None = Field(default=None, description="1:1 16:9 9:16 4:3 3:4 3:2 2:3")
    resolution: Text | None = Field(default=None, description="480p | 720p (| 1080p)")
    image: ImageRef | None = None
    reference_images: list[ImageRef] | None = None
    user: Text | None = Field(default=None, description="Accepted and not used.")


class XaiStarted(BaseModel):
    request_id: str


class XaiVideo(BaseModel):
    url: str
    duration: int
    respect_moderation: bool


class XaiError(BaseModel):
    code: str
    message: str


class XaiResult(BaseModel):
    request_id: str
    status: str
    model: str
    progress: int
    video: XaiVideo | None = None
    error: XaiError | None = None


DONE_EXAMPLE = {
    "request_id": TASK_ID,
    "status": "done",
    "model": "preview",
    "progress": 100,
    "video": {
        "url": f"https://imagine.example.com/files/{TASK_ID}/4c1e9a77.mp4"
        "?expires=1764108000&signature=9f2c…",
        "duration": 6,
        "respect_moderation": True,
    },
}


def _flat(success: dict[str, Any], documented: Responses) -> Responses:
    """`answers(...)`, with xAI's bare JSON as the 200 instead of our envelope."""
    documented[200] = {
        "description": "Success",
        "content": {"application/json": {"example": success}},
    }
    return documented


@router.post(
    "/generations",
    response_model=XaiStarted,
    responses=_flat(
        {"request_id": TASK_ID},
        answers(
            None,
            InvalidRequest("The prompt parameter is required"),
            InsufficientCredits("Insufficient credits: this generation costs 40 credits"),
        ),
    ),
)
async def generations(
    body: Annotated[
        XaiGenerationBody,
        Body(
            openapi_examples=examples(
                {
                    "model": "grok-imagine-video",
                    "prompt": "a lighthouse at dusk, waves crashing",
                    "duration": 6,
                    "aspect_ratio": "16:9",
                    "resolution": "480p",
                },
                "Text to video",
            )
        ),
    ],
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    test_outcome: Annotated[str | None, Header(alias="Imagine-Test-Outcome")] = None,
) -> JSONResponse:
    """xAI's text/image-to-video request; answers `{"request_id"}` to poll with
    `GET /v1/videos/{request_id}`. Costs what `POST /v1/generate` costs."""
    request = XaiRequest(
        prompt=body.prompt,
        model=body.model,
        duration=body.duration,
        aspect_ratio=body.aspect_ratio,
        resolution=body.resolution,
        image_url=body.image.url if body.image is not None else None,
        reference_image_urls=[image.url for image in body.reference_images or ()],
    )
    task_id = await submit_generation(
        svc,
        caller,
        xai_mapping.generate_body(request, svc.engine_for(caller).name),
        idempotency_key=checked_idempotency_key(idempotency_key),
        test_outcome=checked_test_outcome(test_outcome, caller),
    )
    return FastJSONResponse({"request_id": task_id})


@router.get(
    "/{request_id}",
    response_model=XaiResult,
    responses=_flat(DONE_EXAMPLE, answers(None, NotFound("Task not found"))),
)
async def result(
    request_id: Text,
    http_request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
) -> JSONResponse:
    """A request's state: `pending`, `done` (with `video`), `failed` (with `error`,
    HTTP 200 as xAI answers it) or `expired` (cancelled)."""
    task = await service.get_task(svc.db, caller, request_id)
    base_url = svc.base_url(http_request)
    found = xai_mapping.deferred(task, lambda key: svc.storage.url(key, base_url))
    answer: dict[str, Any] = {
        "request_id": task["id"],
        "status": found.status,
        "model": found.model,
        "progress": found.progress,
    }
    if found.url is not None:
        answer["video"] = {
            "url": found.url,
            "duration": found.duration,
            "respect_moderation": True,
        }
    if found.error is not None:
        answer["error"] = {"code": found.error[0], "message": found.error[1]}
    return FastJSONResponse(answer)
