"""The HTTP server we ship: uvicorn with httptools, with bounds on every request.

uvicorn bounds neither a request's header block (httptools keeps every byte
of an unfinished header, joining the pieces of a long value again on each
read) nor the time a client takes to send its headers or its body, so one
connection could hold tens of megabytes, or a server task, for as long as it
liked. `BoundedHttpProtocol` adds those bounds to uvicorn's httptools
protocol, and `uvicorn_config` builds the server from settings: `imagine
serve` and the tests run the same one.

Time is kept by one timer per connection that ticks while the connection
lives (at most once a second), so a request costs a few attribute writes and
no timer of its own.

`ImagineServer` is uvicorn's server with a drain: on SIGTERM readiness turns
503 at once, and the server keeps serving for `IMAGINE_SHUTDOWN_DELAY_SECONDS`
before it stops taking connections (load balancers move away first).
Logging is ours (`imagine.observability.logs`); uvicorn's access log is off,
since `RequestTelemetry` logs every request without its query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from imagine.api.envelope import error_response
from imagine.errors import ApiError, HeadersTooLarge, RequestTimeout
from imagine.observability import logs
from imagine.settings import Settings

# What a connection waits for from its client.
_IDLE, _HEADERS, _BODY = 0, 1, 2


@dataclass(frozen=True)
class RequestBounds:
    """What one request may take before it is refused and its connection closed."""

    max_header_bytes: int
    max_headers: int
    header_timeout: float  # from the request's first byte (the first request: from connecting)
    body_timeout: float  # the longest pause between two reads of a body

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestBounds:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
        )

    @property
    def tick(self) -> float:
        """How often a connection's clock advances; a timeout is kept to within one tick."""
        return min(1.0, self.header_timeout / 4, self.body_timeout / 4)


@dataclass(frozen=True)
class Refusals:
    """The answers to requests over the bounds, built once per server."""

    headers_too_large: bytes
    header_timeout: bytes
    body_timeout: bytes
    too_many_headers: ApiError

    @classmethod
    def for_bounds(cls, bounds: RequestBounds) -> Refusals:
        return cls(
            headers_too_large=_closing_answer(
                HeadersTooLarge(f"Request headers larger than {bounds.max_header_bytes} bytes")
            ),
            header_timeout=_closing_answer(
                RequestTimeout(f"Request headers not received within {bounds.header_timeout:g} s")
            ),
            body_timeout=_closing_answer(
                RequestTimeout(f"Request body stalled for {bounds.body_timeout:g} s")
            ),
            too_many_headers=HeadersTooLarge(
                f"More than {bounds.max_headers} request headers",
                headers={"Connection": "close"},
            ),
        )


def _closing_answer(error: ApiError) -> bytes:
    """The envelope for `error` as raw HTTP/1.1, for answers sent outside any request cycle."""
    response = error_response(error)
    head = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
    return STATUS_LINE[error.status] + head + b"connection: close\r\n\r\n" + bytes(response.body)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` on header size, header count,
    header time and body stalls. Use `bounded_protocol(bounds)` for a class
    with its bounds set."""

    limits: ClassVar[RequestBounds]
    refusals: ClassVar[Refusals]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase = _HEADERS
        self._waited = 0.0  # seconds of the current wait (for a body: since its last bytes)
        self._header_bytes = 0  # of the unfinished header block, from the read after it began
        self._began_in_this_read = False
        self._ticker: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._ticker = self.loop.call_later(self.limits.tick, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._began_in_this_read = False
        super().data_received(data)
        if self._phase == _HEADERS and not self._began_in_this_read:
            # All of this read is one unfinished header block (the read a block
            # begins in may hold the end of the request before it, so it is not
            # counted): what the parser holds stays under the limit plus one read.
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(self.refusals.headers_too_large)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != _HEADERS:  # a later request on this connection: its clock starts now
            self._phase = _HEADERS
            self._waited = 0.0
        self._header_bytes = 0
        self._began_in_this_read = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # One past the bound is kept, to refuse the request once its headers end.
        if len(self.headers) <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._waited = 0.0
        if len(self.headers) <= self.limits.max_headers:
            super().on_headers_complete()
            return
        # Answered through uvicorn's own request cycle, as it answers past limit_concurrency.
        self.app = self._too_many_headers
        try:
            super().on_headers_complete()
        finally:
            self.app = self.config.loaded_app

    async def _too_many_headers(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(self.refusals.too_many_headers)(scope, receive, send)

    def on_body(self, body: bytes) -> None:
        self._waited = 0.0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    def _tick(self) -> None:
        self._ticker = None
        if self.transport.is_closing():
            return
        tick = self.limits.tick
        if self._waiting_on_client():
            self._waited += tick
            if self._phase == _HEADERS and self._waited >= self.limits.header_timeout:
                self._refuse(self.refusals.header_timeout)
                return
            if self._phase == _BODY and self._waited >= self.limits.body_timeout:
                self._refuse(self.refusals.body_timeout)
                return
        self._ticker = self.loop.call_later(tick, self._tick)

    def _waiting_on_client(self) -> bool:
        """True while the next bytes are the client's to send: not between
        requests (uvicorn's keep-alive timeout rules there), not while reading
        is paused (a full buffer, a pipelined request), not while a body waits
        for the app to ask for it (`Expect: 100-continue`)."""
        if self._phase == _IDLE or self.flow.read_paused:
            return False
        return self._phase == _HEADERS or not self.cycle.waiting_for_100_continue

    def _refuse(self, answer: bytes) -> None:
        """Send `answer` unless the request it refuses was answered already (or
        an earlier one is still being answered), then close the connection."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == _BODY:  # the request being read is `cycle`
            unanswered = not cycle.response_started
        else:  # a new request, after `cycle`
            unanswered = cycle is None or cycle.response_complete
        if unanswered:
            self.transport.write(answer)
        if cycle is not None and not cycle.response_complete:
            # Its app now hears a disconnect, and nothing more it sends goes out.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def bounded_protocol(bounds: RequestBounds) -> type[BoundedHttpProtocol]:
    """`BoundedHttpProtocol` with these bounds, for `uvicorn.Config(http=…)`."""

    class Bounded(BoundedHttpProtocol):
        limits = bounds
        refusals = Refusals.for_bounds(bounds)

    return Bounded


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """The server for `app` as `imagine serve` runs it (and every test server)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(RequestBounds.from_settings(settings)),
        ws="none",  # no WebSocket routes: an Upgrade header is ignored
        lifespan="on",
        log_config=None,  # the process's logging is configured by the command
        access_log=False,
        log_level=settings.log_level,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=30,
    )


class ImagineServer(uvicorn.Server):
    """uvicorn's server that, on the first SIGTERM or SIGINT, calls `on_drain`
    (readiness turns 503) and keeps serving for `drain_seconds` before it
    shuts down as uvicorn does. A second signal shuts down at once."""

    def __init__(
        self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_seconds: float
    ) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.drain_seconds = drain_seconds
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_until is None and sig in (signal.SIGTERM, signal.SIGINT):
            self.on_drain()
            if self.drain_seconds > 0:
                self.drain_until = time.monotonic() + self.drain_seconds
                return
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal it caught once the server has stopped,
        # which ends the process without running `atexit`: the log lines still
        # batched are written first.
        with super().capture_signals():
            try:
                yield
            finally:
                logs.flush()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)
