"""The webhook outbox in SQL: find due events, claim them with a lease, record attempts.

`queue.repository._end` writes an event in the transaction that ends a task.
A dispatcher claims due events the way workers claim tasks: one conditional
UPDATE that moves them to `delivering`, counts the attempt and sets a lease
(`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers). An event
whose lease expired (its process died mid-delivery) is due again. The attempt
number taken at claim time fences the result: a dispatcher whose lease was
taken over cannot overwrite the newer attempt's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from imagine.db.database import Database
from imagine.db.models import WebhookAttempt, WebhookEvent
from imagine.ids import utcnow

PENDING = "pending"
DELIVERING = "delivering"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(frozen=True)
class ClaimedEvent:
    id: str
    task_id: str
    account_id: str
    event_type: str
    created_at: datetime
    attempt: int  # 1 for the first try; also the fencing token


@dataclass(frozen=True)
class AttemptResult:
    """What one try gave: an HTTP status, or an error before or instead of one.

    `error` is stored and shown to the account, so it is one of the
    dispatcher's fixed reasons; `detail` (what the resolver or the connection
    said) goes only to the server log.
    """

    status_code: int | None
    error: str | None
    retryable: bool
    detail: str | None = field(default=None, compare=False)

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _due(now: datetime) -> Any:
    return ((WebhookEvent.status == PENDING) & (WebhookEvent.next_attempt_at <= now)) | (
        (WebhookEvent.status == DELIVERING) & (WebhookEvent.lease_expires_at < now)
    )


@dataclass(frozen=True)
class Backlog:
    """Events not yet delivered or given up on, by status, and the oldest one's creation."""

    by_status: dict[str, int]
    oldest_created_at: datetime | None


async def backlog(db: Database) -> Backlog:
    """The outbox as an operator watches it (one read of the due index's statuses)."""
    async with db.read() as session:
        rows = await session.execute(
            select(WebhookEvent.status, func.count(), func.min(WebhookEvent.created_at))
            .where(WebhookEvent.status.in_((PENDING, DELIVERING)))
            .group_by(WebhookEvent.status)
        )
        by_status: dict[str, int] = {PENDING: 0, DELIVERING: 0}
        oldest: datetime | None = None
        for status, count, created_at in rows:
            by_status[status] = int(count)
            if created_at is not None and (oldest is None or created_at < oldest):
                oldest = created_at
    return Backlog(by_status, oldest)


async def has_due(db: Database) -> bool:
    """A cheap read first, so an idle dispatcher never takes SQLite's write lock."""
    async with db.read() as session:
        found = await session.scalar(select(WebhookEvent.id).where(_due(utcnow())).limit(1))
    return found is not None


async def claim_due(db: Database, limit: int, lease_seconds: float) -> list[ClaimedEvent]:
    """Take up to `limit` due events, oldest due first, each with a fresh lease."""
    now = utcnow()
    async with db.write() as session:
        due_ids = (
            select(WebhookEvent.id)
            .where(_due(now))
            .order_by(WebhookEvent.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (
            await session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id.in_(due_ids), _due(now))
                .values(
                    status=DELIVERING,
                    attempts=WebhookEvent.attempts + 1,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                )
                .returning(
                    WebhookEvent.id,
                    WebhookEvent.task_id,
                    WebhookEvent.account_id,
                    WebhookEvent.event_type,
                    WebhookEvent.created_at,
                    WebhookEvent.attempts,
                )
                .execution_options(synchronize_session=False)
            )
        ).all()
    return [
        ClaimedEvent(
            id=row.id,
            task_id=row.task_id,
            account_id=row.account_id,
            event_type=row.event_type,
            created_at=row.created_at,
            attempt=row.attempts,
        )
        for row in sorted(rows, key=lambda r: r.created_at)
    ]


def _held(event: ClaimedEvent) -> Any:
    return (
        (WebhookEvent.id == event.id)
        & (WebhookEvent.status == DELIVERING)
        & (WebhookEvent.attempts == event.attempt)
    )


async def record_attempt(
    db: Database,
    event: ClaimedEvent,
    result: AttemptResult,
    *,
    attempted_at: datetime,
    duration_ms: int,
    retry_delays: Sequence[float],
) -> str | None:
    """Store the attempt and move the event on: delivered, pending again after the
    next back-off delay, or failed (a permanent refusal, or no retries left).
    Returns the new status, or None when another dispatcher holds the event now
    (the attempt is recorded all the same: it happened)."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": None}
    if result.delivered:
        values.update(status=DELIVERED, delivered_at=now)
    elif result.retryable and event.attempt <= len(retry_delays):
        delay = retry_delays[event.attempt - 1]
        values.update(status=PENDING, next_attempt_at=now + timedelta(seconds=delay))
    else:
        values.update(status=FAILED)
    async with db.write() as session:
        session.add(
            WebhookAttempt(
                event_id=event.id,
                attempted_at=attempted_at,
                status_code=result.status_code,
                error=result.error,
                duration_ms=duration_ms,
            )
        )
        moved = await session.execute(
            update(WebhookEvent)
            .where(_held(event))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return str(values["status"]) if getattr(moved, "rowcount", 0) else None


async def release(db: Database, event: ClaimedEvent) -> bool:
    """Hand an interrupted delivery back, due now, without counting the attempt (shutdown)."""
    async with db.write() as session:
        moved = await session.execute(
            update(WebhookEvent)
            .where(_held(event))
            .values(
                status=PENDING,
                attempts=WebhookEvent.attempts - 1,
                lease_expires_at=None,
                next_attempt_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
    return bool(getattr(moved, "rowcount", 0))


async def events_for_task(
    db: Database, task_id: str
) -> list[tuple[WebhookEvent, list[WebhookAttempt]]]:
    """A task's events, oldest first, each with its attempts in order."""
    async with db.read() as session:
        events = list(
            await session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.task_id == task_id)
                .order_by(WebhookEvent.created_at, WebhookEvent.id)
            )
        )
        attempts = list(
            await session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.event_id.in_([e.id for e in events]))
                .order_by(WebhookAttempt.id)
            )
        )
    by_event: dict[str, list[WebhookAttempt]] = {e.id: [] for e in events}
    for attempt in attempts:
        by_event[attempt.event_id].append(attempt)
    return [(event, by_event[event.id]) for event in events]


async def recent_events(
    db: Database, account_id: str, limit: int
) -> list[tuple[WebhookEvent, WebhookAttempt | None]]:
    """An account's latest events, newest first, each with its latest attempt."""
    async with db.read() as session:
        events = list(
            await session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.account_id == account_id)
                .order_by(WebhookEvent.created_at.desc(), WebhookEvent.id.desc())
                .limit(limit)
            )
        )
        latest = (
            select(func.max(WebhookAttempt.id))
            .where(WebhookAttempt.event_id.in_([e.id for e in events]))
            .group_by(WebhookAttempt.event_id)
        )
        attempts = {
            attempt.event_id: attempt
            for attempt in await session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.id.in_(latest))
            )
        }
    return [(event, attempts.get(event.id)) for event in events]
