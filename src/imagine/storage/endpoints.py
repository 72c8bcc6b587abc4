"""Serves stored videos behind signed URLs, with HTTP Range so players can seek."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from imagine.api.security import SECURITY_HEADERS
from imagine.api.services import Services, services
from imagine.errors import NotFound
from imagine.storage.local import LocalStorage

router = APIRouter(tags=["files"])


class VideoFileResponse(FileResponse):
    """A stored video. Starlette answers a bad `Range` itself (400, 416) with a
    response of its own, so the security headers go onto whatever this sends."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        await super().__call__(scope, receive, send_secured)


@router.api_route("/files/{key:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def download(
    key: str,
    svc: Annotated[Services, Depends(services)],
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query()] = "",
) -> FileResponse:
    storage = svc.storage
    path = storage.verify(key, expires, signature) if isinstance(storage, LocalStorage) else None
    if path is None:
        raise NotFound("File not found or link expired")
    return VideoFileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private"})
