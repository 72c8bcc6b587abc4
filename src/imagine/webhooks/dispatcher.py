"""Delivers due webhook events: signed POSTs under the SSRF rules, retried with back-off.

One `Dispatcher` runs next to the workers of a process (see `runtime.WorkerPool`).
It polls the outbox, claims due events with a lease, and delivers each in
its own asyncio task, at most `webhook_concurrency` at once and each under
`webhook_timeout_seconds` (DNS, connect, send and the answer's status line),
so a slow or dead receiver holds one slot for a bounded time and never the
workers or other deliveries. The outcome of every attempt is recorded; the
event is then delivered, due again after the next delay of
`webhook_retry_delays`, or failed.

What counts: a 2xx answer is success. Timeouts, connection and DNS errors,
a name that resolves to an address the SSRF policy refuses, 5xx, 408, 429
and 3xx (redirects are never followed) are retried; any other 4xx, and a URL
the policy refuses as written, fail the event at once. The payload is built
at delivery time from the task as it is then, and signed with the account's
secret as it is then.

What the account sees of a failed attempt is one of a few fixed reasons
below, never what the server's resolver or network said: that would let
anyone with a key map names and addresses inside the server's network. A
forbidden address reads, and is retried, like a name that does not resolve,
so even the reason tells nothing about internal names. The details go to the
server log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select

from imagine import __version__
from imagine.db.database import Database
from imagine.db.models import Account, Task
from imagine.db.unavailable import log_failure
from imagine.ids import utcnow
from imagine.media.netguard import (
    Resolver,
    UnsafeURL,
    check_target,
    default_resolver,
    guarded_transport,
    resolve_checked,
    send_pinned,
)
from imagine.observability import logs
from imagine.observability.metrics import WEBHOOK_DELIVERIES
from imagine.settings import Settings
from imagine.storage.base import Storage
from imagine.tasks.service import isoformat, status_view, task_row
from imagine.webhooks import repository
from imagine.webhooks.repository import AttemptResult, ClaimedEvent
from imagine.webhooks.sealing import SecretBox, UnreadableSecret
from imagine.webhooks.signing import signed_headers

log = logging.getLogger("imagine.webhooks")

_RETRYABLE_4XX = frozenset({408, 429})

# The reasons an account may see (`GET /v1/tasks/{id}/deliveries`).
REFUSED = "refused: the callback URL is not allowed"
CONNECTION_FAILED = "connection failed"
TIMED_OUT = "timed out"
REDIRECT_NOT_FOLLOWED = "redirect not followed"
NO_CALLBACK_URL = "the task has no callback_url"
NO_SIGNING_SECRET = "the account has no webhook signing secret"
INTERNAL_ERROR = "internal error"


# `imagine_webhook_deliveries_total{result}` by the event's status after an attempt.
_RESULTS = {
    repository.DELIVERED: "delivered",
    repository.PENDING: "retrying",
    repository.FAILED: "failed",
}


def build_payload(event_type: str, occurred_at: datetime, data: dict[str, Any]) -> bytes:
    """The body of a delivery: `{"type", "timestamp", "data"}` (Standard Webhooks' shape)."""
    payload = {"type": event_type, "timestamp": isoformat(occurred_at), "data": data}
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def classify(status_code: int, location: str | None = None) -> AttemptResult:
    """Success, worth retrying, or refused for good, from the receiver's HTTP status."""
    if 200 <= status_code < 300:
        return AttemptResult(status_code, None, retryable=False)
    if 300 <= status_code < 400:
        where = repr(location[:200]) if location else "nowhere"
        return AttemptResult(
            status_code, REDIRECT_NOT_FOLLOWED, retryable=True, detail=f"Location: {where}"
        )
    if 400 <= status_code < 500 and status_code not in _RETRYABLE_4XX:
        return AttemptResult(status_code, None, retryable=False)
    return AttemptResult(status_code, None, retryable=True)


class Dispatcher:
    """Claims due events and delivers them concurrently until `stop()`."""

    def __init__(
        self,
        db: Database,
        storage: Storage,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        name: str | None = None,
    ) -> None:
        self.db = db
        self.storage = storage
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}-hooks"
        self._allow_private = settings.allow_private_urls
        self._resolver: Resolver = resolver or default_resolver
        self._timeout = settings.webhook_timeout_seconds
        self._delays = settings.webhook_retry_delays
        self._concurrency = settings.webhook_concurrency
        self._poll = settings.poll_interval
        self._grace = min(settings.shutdown_grace_seconds, self._timeout)
        # Longer than any attempt plus recording it, so a live dispatcher keeps
        # its events; a dead one's come back after this.
        self._lease = 2 * self._timeout + 10
        self._base_url = settings.public_url or f"http://{settings.host}:{settings.port}"
        self._secrets = SecretBox.for_settings(settings)
        self._transport: httpx.AsyncHTTPTransport | None = None
        self._inflight: dict[asyncio.Task[None], ClaimedEvent] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Deliver until `stop()`, then let in-flight deliveries finish briefly and
        hand back the rest (due again at once, the attempt not counted)."""
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    claimed = await self.dispatch_due()
                except Exception:
                    log_failure(log, "%s: outbox access failed", self.name)
                    claimed = 0
                if claimed and len(self._inflight) < self._concurrency:
                    continue  # more may be due right now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
        finally:
            await self._drain()

    async def dispatch_due(self) -> int:
        """Claim what fits under the concurrency cap and start delivering it."""
        room = self._concurrency - len(self._inflight)
        if room <= 0 or not await repository.has_due(self.db):
            return 0
        events = await repository.claim_due(self.db, room, self._lease)
        for event in events:
            task = asyncio.create_task(self.deliver(event), name=f"webhook {event.id}")
            self._inflight[task] = event
            task.add_done_callback(self._finished)
        return len(events)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()  # a slot is free

    async def _drain(self) -> None:
        pending = dict(self._inflight)
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=self._grace)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            for task in unfinished:
                with contextlib.suppress(Exception):
                    await repository.release(self.db, pending[task])
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    async def deliver(self, event: ClaimedEvent) -> None:
        """One attempt at a claimed event, its outcome recorded (never raises but on cancel)."""
        # Its own asyncio task: this context is the delivery's alone.
        logs.start(
            webhook_id=event.id,
            task_id=event.task_id,
            account_id=event.account_id,
            attempt=event.attempt,
        )
        attempted_at = utcnow()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                result = await self.attempt(event)
        except TimeoutError:
            detail = f"no answer within {self._timeout:g}s"
            result = AttemptResult(None, TIMED_OUT, retryable=True, detail=detail)
        except Exception:
            log.exception("%s: delivering %s failed unexpectedly", self.name, event.id)
            result = AttemptResult(None, INTERNAL_ERROR, retryable=True)
        duration_ms = round((time.monotonic() - started) * 1000)
        if result.detail is not None:
            log.warning(
                "webhook %s for %s, attempt %d: %s (%s)",
                event.id,
                event.task_id,
                event.attempt,
                result.error or f"HTTP {result.status_code}",
                result.detail,
            )
        try:
            status = await repository.record_attempt(
                self.db,
                event,
                result,
                attempted_at=attempted_at,
                duration_ms=duration_ms,
                retry_delays=self._delays,
            )
        except Exception:
            # The lease runs out and the event is tried again: at least once.
            log.exception("%s: recording the attempt of %s failed", self.name, event.id)
            return
        if status is not None:
            WEBHOOK_DELIVERIES.labels(_RESULTS[status]).inc()
        if status == repository.FAILED:
            log.warning(
                "webhook %s for %s failed for good after %d attempt(s): %s",
                event.id,
                event.task_id,
                event.attempt,
                result.error or f"HTTP {result.status_code}",
            )

    async def attempt(self, event: ClaimedEvent) -> AttemptResult:
        """One try: build and sign the payload, check the target, POST it."""
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(Task, Account.webhook_secret)
                    .join(Account, Account.id == Task.account_id)
                    .where(Task.id == event.task_id)
                )
            ).first()
        task, stored = (row[0], row[1]) if row is not None else (None, None)
        if task is None or not task.callback_url:
            return AttemptResult(None, NO_CALLBACK_URL, retryable=False)
        if not stored:
            # Never deliver unsigned: the receiver could not tell it from a forgery.
            return AttemptResult(None, NO_SIGNING_SECRET, retryable=False)
        try:
            secret = self._secrets.open(task.account_id, stored)
        except UnreadableSecret as exc:
            # A configuration error: retried, so deliveries resume once it is fixed.
            return AttemptResult(None, INTERNAL_ERROR, retryable=True, detail=str(exc))
        try:
            target = check_target(task.callback_url, allow_private=self._allow_private)
        except UnsafeURL as exc:
            return AttemptResult(None, REFUSED, retryable=False, detail=str(exc))
        try:
            addresses = await resolve_checked(
                target, resolver=self._resolver, allow_private=self._allow_private
            )
        except (UnsafeURL, OSError) as exc:
            # The same answer whether the name is unknown or points inside: see above.
            detail = f"{exc} (resolving {target.host!r})"
            return AttemptResult(None, CONNECTION_FAILED, retryable=True, detail=detail)

        data = status_view(task_row(task), lambda key: self.storage.url(key, self._base_url))
        body = build_payload(event.event_type, event.created_at, data)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"Imagine-Webhooks/{__version__}",
            **signed_headers(secret, event.id, int(time.time()), body),
        }
        try:
            response = await send_pinned(
                self._http(),
                "POST",
                target,
                addresses,
                headers=headers,
                io_timeout=self._timeout,
                content=body,
            )
        except UnsafeURL as exc:
            return AttemptResult(None, REFUSED, retryable=False, detail=str(exc))
        except httpx.TimeoutException as exc:
            return AttemptResult(None, TIMED_OUT, retryable=True, detail=repr(exc))
        except httpx.TransportError as exc:
            return AttemptResult(None, CONNECTION_FAILED, retryable=True, detail=repr(exc))
        try:
            return classify(response.status_code, response.headers.get("location"))
        finally:
            await response.aclose()

    def _http(self) -> httpx.AsyncHTTPTransport:
        if self._transport is None:
            self._transport = guarded_transport(max_connections=self._concurrency)
        return self._transport
