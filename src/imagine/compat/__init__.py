"""Faces for clients written against other video APIs (docs/compat.md).

Each face translates: a foreign request becomes our `GenerateBody` and goes
through `imagine.tasks.actions.submit_generation` (the same validation,
charge, idempotency, limits and queue as `POST /v1/generate`), and our task is
shown in the foreign status shape. None of them owns money, tasks or rules,
so a task made through any face is visible through all of them.

- `xai_rest`: xAI's REST routes, `POST /v1/videos/generations` and
  `GET /v1/videos/{request_id}`, behind the `/v1` gate.
- `xai_grpc` + `grpc_server`: xAI's gRPC `Video` service for `xai-sdk`, on
  its own port (`IMAGINE_GRPC_PORT`), in the API process's event loop.
- `openai_videos`: OpenAI's videos API under `/openai/v1`, behind a gate of
  its own that answers in OpenAI's error shape.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI

from imagine.api.gate import Admission, V1Gate
from imagine.api.services import Services
from imagine.compat import openai_videos, xai_rest
from imagine.settings import Settings, SettingsError

if TYPE_CHECKING:
    from imagine.compat.grpc_server import GrpcFace

__all__ = ["grpc_served", "install_compat", "start_grpc"]

log = logging.getLogger("imagine.compat")


def install_compat(app: FastAPI, svc: Services, admission: Admission) -> None:
    """The HTTP faces: xAI's REST routes and OpenAI's videos API. (The gRPC face
    runs beside the HTTP server: `imagine.compat.grpc_server`.)"""
    app.include_router(xai_rest.router)
    app.mount(openai_videos.PREFIX, openai_videos.create_app(svc))
    app.add_middleware(
        V1Gate,
        admission=admission,
        max_body_bytes=svc.settings.body_limit,
        prefix=openai_videos.PREFIX,
        render=openai_videos.openai_error,
    )


def grpc_served(settings: Settings) -> bool:
    """Whether this process serves the gRPC face: `IMAGINE_GRPC_PORT` is not 0 and
    `xai-sdk` (the `xai` extra) is installed. Asked for explicitly without the
    package, it is a configuration error; left at its default, a warning."""
    if not settings.grpc_port:
        return False
    if importlib.util.find_spec("xai_sdk") is not None:
        return True
    if "grpc_port" in settings.model_fields_set:
        raise SettingsError(
            "IMAGINE_GRPC_PORT: the gRPC face needs xai-sdk: pip install 'imagine[xai]'"
        )
    log.warning("xAI-compatible gRPC not served: install the xai extra (imagine[xai])")
    return False


async def start_grpc(svc: Services, admission: Admission) -> GrpcFace | None:
    """The gRPC face, started, when `grpc_served`."""
    if not grpc_served(svc.settings):
        return None
    from imagine.compat.grpc_server import GrpcFace

    face = GrpcFace(svc, admission)
    await face.start()
    return face
