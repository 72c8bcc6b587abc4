"""The door to `/v1`: bearer key, rate limit and body size, before any route runs.

A plain ASGI middleware rather than a route dependency, so that it runs for
every `/v1` request (unknown paths and malformed bodies included), refuses a
missing key before looking at the body, and stamps the `X-RateLimit-*`
headers on every answer to an authenticated caller, whatever produced it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagine.accounts.service import Principal
from imagine.api.envelope import error_response, unexpected
from imagine.api.ratelimit import RateLimiter, StorageError
from imagine.errors import (
    ApiError,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)

log = logging.getLogger("imagine.api")

Authenticator = Callable[[str], Awaitable[Principal | None]]
LimitForPlan = Callable[[str], int]


class V1Gate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Authenticator,
        limiter: RateLimiter,
        limit_for_plan: LimitForPlan,
        max_body_bytes: int,
        fail_open: bool = False,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.limiter = limiter
        self.limit_for_plan = limit_for_plan
        self.max_body_bytes = max_body_bytes
        self.fail_open = fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        principal = None
        if scheme.lower() == "bearer" and token.strip():
            try:
                principal = await self.authenticate(token.strip())
            except Exception as exc:
                await self._refuse(unexpected(exc, path), scope, receive, send)
                return
        if principal is None:
            await self._refuse(Unauthorized(), scope, receive, send)
            return

        try:
            state = await self.limiter.hit(
                principal.rate_limit_identity, self.limit_for_plan(principal.plan)
            )
        except StorageError as exc:
            log.error("rate-limit store unreachable: %s", exc)
            if not self.fail_open:
                await self._refuse(
                    ServiceUnavailable("Rate limiting is unavailable, please retry shortly"),
                    scope,
                    receive,
                    send,
                )
                return
            state = None
        rate_headers = state.headers() if state is not None else {}
        if state is not None and not state.allowed:
            await self._refuse(
                RateLimited(
                    f"Rate limit of {state.limit} requests per minute exceeded",
                    headers=rate_headers,
                ),
                scope,
                receive,
                send,
            )
            return

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
        scope.setdefault("state", {}).update(principal=principal, rate_limit=state, body=body)
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
            await error_response(unexpected(exc, path))(scope, receive, send_with_limits)

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
        await error_response(error)(scope, receive, send)


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
