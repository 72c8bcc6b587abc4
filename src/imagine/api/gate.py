"""The door to `/v1`: bearer key, rate limit and body size, before any route runs.

A plain ASGI middleware rather than a route dependency, so that it runs for
every `/v1` request (unknown paths and malformed bodies included), refuses a
missing key before looking at the body, and stamps the `X-RateLimit-*`
headers on every answer to an authenticated caller, whatever produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagine.accounts.service import Principal
from imagine.api.envelope import error_response, unexpected
from imagine.api.ratelimit import RateLimiter, RateLimitState, StorageError
from imagine.errors import (
    ApiError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from imagine.observability import logs
from imagine.observability.metrics import RATE_LIMIT_DECISIONS

log = logging.getLogger("imagine.api")

_ALLOWED = RATE_LIMIT_DECISIONS.labels("allowed")
_LIMITED = RATE_LIMIT_DECISIONS.labels("limited")
_FAIL_OPEN = RATE_LIMIT_DECISIONS.labels("fail_open")
_UNAVAILABLE = RATE_LIMIT_DECISIONS.labels("unavailable")

Authenticator = Callable[[str], Awaitable[Principal | None]]
LimitForPlan = Callable[[str], int]
Render = Callable[[ApiError], Response]


@dataclass(frozen=True)
class Admitted:
    """A caller let in: who it is, and its rate-limit window after this request
    (None when the store is down and the service fails open)."""

    principal: Principal
    rate_limit: RateLimitState | None

    @property
    def headers(self) -> dict[str, str]:
        return self.rate_limit.headers() if self.rate_limit is not None else {}


class Admission:
    """Who is calling and whether they may, for every door into the service: the
    HTTP gates below and the gRPC face (`imagine.compat.xai_grpc`) ask the same
    key cache and count against the same per-account windows."""

    def __init__(
        self,
        *,
        authenticate: Authenticator,
        limiter: RateLimiter,
        limit_for_plan: LimitForPlan,
        fail_open: bool = False,
    ) -> None:
        self.authenticate = authenticate
        self.limiter = limiter
        self.limit_for_plan = limit_for_plan
        self.fail_open = fail_open

    async def admit(self, authorization: str) -> Admitted:
        """The caller of an `Authorization: Bearer <key>` value, counted once.

        Raises `Unauthorized`, `ServiceUnavailable` (the shared store is down and
        the service does not fail open) or `RateLimited` (with the limit headers).
        """
        scheme, _, token = authorization.partition(" ")
        principal = None
        if scheme.lower() == "bearer" and token.strip():
            try:
                principal = await self.authenticate(token.strip())
            except Exception as exc:  # the database out of reach: 503, else a logged 500
                raise unexpected(exc, "the key check") from None
        if principal is None:
            raise Unauthorized()
        logs.bind(account_id=principal.account_id)
        try:
            state = await self.limiter.hit(
                principal.rate_limit_identity, self.limit_for_plan(principal.plan)
            )
        except StorageError as exc:
            log.error("rate-limit store unreachable: %s", exc)
            if not self.fail_open:
                _UNAVAILABLE.inc()
                raise ServiceUnavailable(
                    "Rate limiting is unavailable, please retry shortly"
                ) from None
            _FAIL_OPEN.inc()
            state = None
        if state is not None and not state.allowed:
            _LIMITED.inc()
            raise RateLimited(
                f"Rate limit of {state.limit} requests per minute exceeded",
                headers=state.headers(),
            )
        if state is not None:
            _ALLOWED.inc()
        return Admitted(principal, state)


class V1Gate:
    """The HTTP door for every path under `prefix` (`/v1`; `/openai/v1` has a
    gate of its own that answers in OpenAI's error shape through `render`)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        admission: Admission,
        max_body_bytes: int,
        prefix: str = "/v1",
        render: Render = error_response,
    ) -> None:
        self.app = app
        self.admission = admission
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        prefix = self.prefix
        if scope["type"] != "http" or not (
            path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            admitted = await self.admission.admit(headers.get("authorization", ""))
        except ApiError as refusal:
            await self._refuse(refusal, scope, receive, send)
            return
        state = admitted.rate_limit
        rate_headers = admitted.headers

        try:
            body = await self._read_body(headers, receive)
        except ClientDisconnect:
            return  # gone (or timed out) mid-body: a partial body is never acted on
        if body is None:
            error = PayloadTooLarge(f"Request body larger than {self.max_body_bytes} bytes")
            error.headers.update(rate_headers)
            await self._refuse(error, scope, receive, send)
            return

        # The body goes on both as bytes (for `FastPaths`) and replayed (for the routes).
        scope.setdefault("state", {}).update(
            principal=admitted.principal, rate_limit=state, body=body
        )
        replay = replaying(body, receive)

        raw_rate_headers = [
            (name.lower().encode(), value.encode()) for name, value in rate_headers.items()
        ]
        started = False

        async def send_with_limits(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *raw_rate_headers]
            await send(message)

        try:
            await self.app(scope, replay, send_with_limits)
        except Exception as exc:
            # Unexpected errors still answer with the envelope and the limit headers.
            if started:
                raise
            await self.render(unexpected(exc, path))(scope, receive, send_with_limits)

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (Content-Length is not
        trusted); `ClientDisconnect` when the connection ends before the body does."""
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(self, error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await self.render(error)(scope, receive, send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that first hands over the body already read in full, then
    passes through (so the app still sees a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
