"""`RequestTelemetry`: each request's id, access-log line and duration, in one ASGI layer.

The outermost of our middlewares, a plain ASGI one (a `BaseHTTPMiddleware`
costs several times more per request). For every HTTP request it

- takes the client's `X-Request-ID` when it is well-formed (1-128 of
  `A-Z a-z 0-9 . _ : -`), or makes one, binds it to the log context and
  returns it as `X-Request-ID` on the answer;
- records the time to the answer in `http_server_request_duration_seconds`
  by method, route template (`/v1/tasks/{task_id}/deliveries`, never the
  raw path; `unrouted` for answers given before routing: the gate's
  refusals, unknown paths) and status;
- logs one line: method, route, path without its query string (signed URLs
  carry their signature there), status and duration, with the context the
  request gathered (its id; the account, bound by the gate; the task). Probes and
  scrapes (`/livez`, `/readyz`, `/healthz`, `/metrics`) log at DEBUG;
- answers an exception that escaped every handler with the 500 envelope
  naming the request id, and logs it.

uvicorn's own access log is off (`imagine.server`): it prints query strings.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagine.api.envelope import error_response
from imagine.errors import InternalError
from imagine.observability import logs
from imagine.observability.metrics import HTTP_DURATION

access_log = logging.getLogger("imagine.access")
log = logging.getLogger("imagine.api")

HEADER = b"x-request-id"
ROUTE_KEY = "imagine.route"
"""Scope key where a layer that answers without the router (`FastPaths`) names its route."""
UNROUTED = "unrouted"
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# RFC 9110's methods; anything else is one label value, as OpenTelemetry does.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Ids unique across processes without a random draw per request: a random
    process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    @staticmethod
    def accepted(value: bytes) -> str | None:
        """The client's id when it is well-formed, else None."""
        text = value.decode("latin-1")
        return text if _WELL_FORMED.fullmatch(text) else None


def route_of(scope: Scope) -> str:
    """The template of the route that answered. Inside a mounted application
    (`/openai/v1`, `/static`) the router leaves its mount path in `root_path`,
    and the inner route's template (relative to it), if any, in `route`."""
    root: str = scope.get("root_path", "")
    app_root: str = scope.get("app_root_path", root)
    mounted = root[len(app_root) :] if root.startswith(app_root) else ""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path and not isinstance(route, Mount):
        return mounted + path
    if mounted:  # answered by a mounted application without routes (static files)
        return mounted
    named = scope.get(ROUTE_KEY)
    return named if isinstance(named, str) else UNROUTED


class RequestTelemetry:
    def __init__(self, app: ASGIApp, *, metrics: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.ids = RequestIds()
        self._observers: dict[tuple[str, str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == HEADER:
                request_id = RequestIds.accepted(value)
                break
        if request_id is None:
            request_id = self.ids.new()
        # A fresh context: nothing of an earlier request on this task survives.
        logs.start(request_id=request_id)
        id_header = (HEADER, request_id.encode("latin-1"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if status:
                raise  # the answer has begun; the server closes the connection
            log.exception("unhandled error on %s %s", scope["method"], route_of(scope))
            error = InternalError(f"Internal server error (request id {request_id})")
            await error_response(error)(scope, receive, send_with_id)
        finally:
            self._record(scope, status or 500, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "_OTHER"
        route = route_of(scope)
        if self.metrics:
            key = (method, route, status)
            observe = self._observers.get(key)
            if observe is None:
                observe = self._observers[key] = HTTP_DURATION.observer(method, route, str(status))
            observe(elapsed)
        path: str = scope["path"]
        level = logging.DEBUG if path in PROBES else logging.INFO
        if access_log.isEnabledFor(level):
            # The context adds the request id, and the account and task where known.
            logs.log_fields(
                access_log,
                level,
                "request",
                {
                    "method": method,
                    "route": route,
                    "path": path[:512],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
