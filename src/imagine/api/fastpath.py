"""Plain-ASGI answers for the calls clients make most, in front of FastAPI.

A client polls `GET /v1/status` every second or two for minutes, and a busy
one submits hundreds of tasks a minute. For both, FastAPI's routing,
dependency resolution and request objects cost several times the work
itself. `FastPaths` sits behind `V1Gate` — the caller is authenticated and
counted, the body read (and left in the scope's state), and the gate adds
the rate-limit headers to whatever is sent — and hands a request to a
handler registered for its method and path. A handler answers the ordinary
form of its request and returns None for anything else (a malformed body, a
missing parameter), which then goes on to the FastAPI route: that route
declares the endpoint in OpenAPI, produces the exact error for every bad
input, and shares its working code with the handler, so both give the same
answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from imagine.api.envelope import error_response
from imagine.errors import ApiError
from imagine.observability.http import ROUTE_KEY

FastHandler = Callable[[Scope, bytes], Awaitable[Response | None]]


class FastPaths:
    def __init__(self, app: ASGIApp, *, handlers: dict[tuple[str, str], FastHandler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.handlers.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_KEY] = scope["path"]  # the handlers' paths are their routes' templates
        try:
            response = await handler(scope, scope["state"]["body"])
        except ApiError as error:
            response = error_response(error)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)
