"""`GET /v1/status`, the call clients make most (every second or two, for
minutes, per task), served as plain ASGI.

The work behind a poll is two indexed reads; FastAPI's routing, dependency
resolution and request objects cost several times that. `StatusFastPath`
sits behind `V1Gate` — the caller is authenticated and counted, and the gate
adds the rate-limit headers to whatever is sent — and answers the ordinary
form of the request, `GET /v1/status?task_id=…`, itself. Anything else (the
parameter missing or repeated, another method) goes on to the FastAPI route,
which declares the endpoint in OpenAPI and answers through the same
`task_view`, so both give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from imagine.api.envelope import error_response, success
from imagine.api.services import Services
from imagine.db.prepared import Row
from imagine.errors import ApiError
from imagine.tasks import service
from imagine.tasks.states import PENDING, PROCESSING

PATH = "/v1/status"


async def task_view(svc: Services, task: Row, base_url: Callable[[], str]) -> dict[str, Any]:
    """A task's `data` as status, cancel and the task list show it. `base_url` is
    asked only when there are file URLs to build."""
    view = service.status_view(task, lambda key: svc.storage.url(key, base_url()))
    if task["status"] in (PENDING, PROCESSING):
        view.update(await service.progress_estimate(svc.db, task, svc.recent_durations))
    return view


class StatusFastPath:
    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task_id = _plain_status_request(scope)
        if task_id is None:
            await self.app(scope, receive, send)
            return
        svc = self.services
        try:
            task = await service.get_task(svc.db, scope["state"]["principal"], task_id)
            data = await task_view(svc, task, lambda: svc.base_url(Request(scope)))
        except ApiError as error:
            await error_response(error)(scope, receive, send)
            return
        await success(data)(scope, receive, send)


def _plain_status_request(scope: Scope) -> str | None:
    """The task id of `GET /v1/status?task_id=…` with the parameter given once;
    None for anything the FastAPI route should see."""
    if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
        return None
    query: bytes = scope["query_string"]
    if query.startswith(b"task_id=") and not any(mark in query for mark in _NEEDS_PARSING):
        return query[8:].decode("latin-1")  # what the full parse below gives for such a query
    values = QueryParams(query).getlist("task_id")
    return values[0] if len(values) == 1 else None


_NEEDS_PARSING = (b"&", b"%", b"+")
