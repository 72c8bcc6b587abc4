"""Serves stored videos behind signed URLs, with HTTP Range so players can seek."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from imagine.api.services import Services, services
from imagine.errors import NotFound
from imagine.storage.local import LocalStorage

router = APIRouter(tags=["files"])


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
    return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private"})
