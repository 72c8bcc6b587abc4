"""xAI's REST video routes: `POST /v1/videos/generations` and
`GET /v1/videos/{request_id}`, with xAI's JSON shapes, on our `/v1` (the same
gate, keys, limits and error envelope as every `/v1` route).

The request id is our task id, so a task made here is the same task in
`/v1/status`, `/v1/tasks`, the console and the other faces.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt

from imagine.accounts.service import Principal
from imagine.api.envelope import FastJSONResponse
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.compat import xai_mapping
from imagine.compat.xai_mapping import XaiRequest
from imagine.tasks import service
from imagine.tasks.actions import submit_with_headers

# Not in /openapi.json, which documents Imagine's own API: these answer in xAI's
# shapes (docs/compat.md), as the OpenAI-compatible routes answer in OpenAI's.
router = APIRouter(prefix="/v1/videos", include_in_schema=False)


class ImageRef(BaseModel):
    """`{"url": …}`: an http(s) or `data:image/…;base64` URL."""

    model_config = ConfigDict(extra="forbid")

    url: Text


class XaiGenerationBody(BaseModel):
    """xAI's `POST /v1/videos/generations` body, mapped by `xai_mapping`; fields
    it does not list (`size`, `output`) are refused as unknown."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    model: Text | None = None
    duration: StrictInt | None = None
    aspect_ratio: Text | None = None
    resolution: Text | None = None
    image: ImageRef | None = None
    reference_images: list[ImageRef] | None = None
    user: Text | None = None  # accepted, not used


@router.post("/generations")
async def generations(
    body: XaiGenerationBody,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    test_outcome: Annotated[str | None, Header(alias="Imagine-Test-Outcome")] = None,
) -> JSONResponse:
    """xAI's text/image-to-video request; answers `{"request_id"}` to poll with
    `GET /v1/videos/{request_id}`. Costs what `POST /v1/generate` costs."""
    asked = XaiRequest(
        prompt=body.prompt,
        model=body.model,
        duration=body.duration,
        aspect_ratio=body.aspect_ratio,
        resolution=body.resolution,
        image_url=body.image.url if body.image is not None else None,
        reference_image_urls=[image.url for image in body.reference_images or ()],
    )
    ours = xai_mapping.generate_body(asked, svc.engine_for(caller).name)
    task_id = await submit_with_headers(svc, caller, ours, idempotency_key, test_outcome)
    return FastJSONResponse({"request_id": task_id})


@router.get("/{request_id}")
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
