"""OpenAI's videos API (`client.videos` of the `openai` package) under
`/openai/v1`: `openai.OpenAI(base_url="http://host:8000/openai/v1", api_key=<key>)`.

Its own prefix, because xAI's REST API already owns `/v1/videos/{id}`. A small
application of its own, mounted there, so that everything under it answers in
OpenAI's error shape (unknown paths and bad input included); its gate is the
`/v1` gate's code with that shape (`imagine.compat.install_compat`). Video ids
are our task ids.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from imagine.accounts.service import Principal
from imagine.api.envelope import FastJSONResponse, install_error_handlers
from imagine.api.security import SECURITY_HEADERS
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.compat import openai_mapping
from imagine.db.prepared import Row
from imagine.engines.base import EngineCapabilities
from imagine.errors import ApiError, InvalidRequest
from imagine.media.images import as_data_url
from imagine.media.video import first_frame_jpeg
from imagine.tasks import service
from imagine.tasks.actions import submit_with_headers
from imagine.tasks.states import COMPLETED, PENDING, PROCESSING

PREFIX = "/openai/v1"
POLL_AFTER_MS = 1000
"""Sent as `openai-poll-after-ms` with an unfinished video; the SDK's poll reads it."""

CREATE_FIELDS = ("prompt", "model", "seconds", "size")

router = APIRouter(prefix="/videos")


def openai_error(error: ApiError) -> Response:
    status, body, headers = openai_mapping.error_object(error)
    return FastJSONResponse(body, status_code=status, headers=headers)


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = svc
    install_error_handlers(app, openai_error)
    app.include_router(router)
    return app


def _capabilities(svc: Services, engine: str) -> EngineCapabilities:
    """The capabilities of the engine a task ran on (for its size); the table's
    sizes for an engine this process no longer has."""
    for candidate in (svc.engine, svc.test_engine):
        if candidate.name == engine:
            return candidate.capabilities
    return EngineCapabilities()


def _video(svc: Services, task: Row) -> Response:
    video = openai_mapping.video_object(task, _capabilities(svc, task["engine"]))
    unfinished = task["status"] in (PENDING, PROCESSING)
    headers = {"openai-poll-after-ms": str(POLL_AFTER_MS)} if unfinished else None
    return FastJSONResponse(video, headers=headers)


async def _create_fields(request: Request) -> tuple[dict[str, Any], str | None]:
    """The fields of a create, multipart (what the SDK sends) or JSON, and the
    `input_reference` image as a URL (a `data:` URL for an uploaded file)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json":
        try:
            payload = orjson.loads(request.state.body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("The request body must be a JSON object")
        reference = payload.pop("input_reference", None)
        return payload, _referenced_url(reference)
    form = await request.form(max_files=1, max_fields=len(CREATE_FIELDS) + 1)
    fields: dict[str, Any] = {}
    image = None
    for name, value in form.multi_items():
        if name == "input_reference" and isinstance(value, UploadFile):
            image = as_data_url(await value.read(), value.content_type)
        elif name in CREATE_FIELDS and isinstance(value, str):
            fields[name] = value
        else:
            raise InvalidRequest(f"Unknown parameter: {name}")
    return fields, image


def _referenced_url(reference: object) -> str | None:
    if reference is None:
        return None
    if isinstance(reference, dict) and isinstance(reference.get("image_url"), str):
        return str(reference["image_url"])
    raise InvalidRequest(
        'The input_reference parameter must be an uploaded image or {"image_url": …}: '
        "file ids are not supported"
    )


@router.post("")
async def create_video(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    test_outcome: Annotated[str | None, Header(alias="Imagine-Test-Outcome")] = None,
) -> Response:
    fields, image = await _create_fields(request)
    engine = svc.engine_for(caller)
    body = openai_mapping.generate_body(fields, image, engine.capabilities, engine.name)
    task_id = await submit_with_headers(svc, caller, body, idempotency_key, test_outcome)
    return _video(svc, await service.get_task(svc.db, caller, task_id))


@router.get("")
async def list_videos(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    after: Annotated[Text | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> Response:
    page = await service.list_tasks(
        svc.db, caller, status=None, limit=limit, after=after, oldest_first=order == "asc"
    )
    data = [
        openai_mapping.video_object(task, _capabilities(svc, task["engine"])) for task in page.tasks
    ]
    return FastJSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": page.has_more,
        }
    )


@router.get("/{video_id}")
async def retrieve_video(
    video_id: Text,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
) -> Response:
    return _video(svc, await service.get_task(svc.db, caller, video_id))


@router.delete("/{video_id}")
async def delete_video(
    video_id: Text,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
) -> Response:
    """Deletes the video and the task (a queued one is cancelled and refunded
    first; one in progress cannot be deleted until it ends)."""
    await service.delete_task(svc.db, caller, video_id, svc.storage, svc.inputs)
    return FastJSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})


@router.get("/{video_id}/content")
async def download_content(
    video_id: Text,
    request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    variant: Annotated[Text, Query()] = "video",
) -> Response:
    """`video`: a redirect to the MP4's signed URL (the SDK follows it);
    `thumbnail`: the first frame as a JPEG."""
    if variant not in ("video", "thumbnail"):
        raise InvalidRequest("The variant parameter must be video or thumbnail")
    task = await service.get_task(svc.db, caller, video_id)
    if task["status"] != COMPLETED:
        shown = openai_mapping.video_object(task, _capabilities(svc, task["engine"]))["status"]
        raise InvalidRequest(f"Video {video_id} has no content: it is {shown}")
    key = task["outputs"][0]
    if variant == "thumbnail":
        video = await asyncio.to_thread(svc.storage.read, key)
        picture = await asyncio.to_thread(first_frame_jpeg, video)
        response: Response = Response(picture, media_type="image/jpeg")
    else:
        response = RedirectResponse(svc.storage.url(key, svc.base_url(request)), status_code=302)
    response.raw_headers.extend(SECURITY_HEADERS)
    return response


_UNSUPPORTED = {
    "/{video_id}/remix": "Remixing a video",
    "/edits": "Editing a video",
    "/extensions": "Extending a video",
    "/characters": "Characters",
}


def _refuse(what: str) -> Any:
    async def unsupported() -> Response:
        raise InvalidRequest(f"{what} is not supported by this server")

    return unsupported


for _path, _what in _UNSUPPORTED.items():
    router.add_api_route(_path, _refuse(_what), methods=["POST"])
