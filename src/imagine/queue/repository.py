"""The tasks table as a queue: claim, lease, heartbeat, finish, cancel, recover.

A claim gives the task a fresh lease token. Every later write by that worker
names the token, so a worker whose lease expired and was taken over cannot
overwrite the new owner's result (fencing). Every way a task ends goes
through `_end`: one conditional UPDATE on the status, and in the same
transaction the refund (unless completed) and the webhook event (if the task
has a callback). The status condition makes the transition happen once, so a
refund and an event happen once. PostgreSQL claims with `FOR UPDATE SKIP
LOCKED`; SQLite's write transactions are serialised (`BEGIN IMMEDIATE`), so the
same statement is safe there.

The queue's metrics (queue wait, tasks finished, refunds, lease expiries) are
recorded here, once the transaction that makes them true has committed.

A cancel of a running task is linearizable: the cancel stamps
`cancel_requested_at` under the row's lock, and every ending a worker writes
(complete, fail, retry, release) is conditioned on that stamp being absent.
When it is present the same transaction ends the task `cancelled` instead, so
a cancel that was answered always wins, and one that finds the task finished
was answered too late to change it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.credits import ledger
from imagine.db.database import Database, in_session
from imagine.db.models import Task, WebhookEvent
from imagine.failures import FailureReason
from imagine.ids import new_id, utcnow
from imagine.moderation.moderator import Refusal
from imagine.moderation.records import add_refusal
from imagine.observability import metrics
from imagine.queue.fairness import CLAIM_ORDER
from imagine.tasks.schemas import GenerationRequest
from imagine.tasks.states import CANCELLED, COMPLETED, FAILED, PENDING, PROCESSING


@dataclass(frozen=True)
class ClaimedTask:
    task_id: str
    account_id: str
    request: GenerationRequest
    attempt: int
    max_attempts: int
    lease_token: str
    engine: str = ""
    test_outcome: str | None = None
    engine_state: dict[str, Any] = field(default_factory=dict)
    traceparent: str | None = None


@dataclass(frozen=True)
class Ended:
    """A task that reached its final status, for the metrics once committed."""

    task_id: str
    engine: str
    status: str
    reason: FailureReason | None
    refunded: int

    def record(self) -> None:
        metrics.task_ended(self.engine, self.status, self.reason, self.refunded)


def _recorded(ended: Ended | None) -> bool:
    """Count a committed ending; True when there was one."""
    if ended is None:
        return False
    ended.record()
    return True


@dataclass(frozen=True)
class Heartbeat:
    alive: bool  # False: the lease was lost
    cancel_requested: bool = False


async def claim(db: Database, worker_id: str, lease_seconds: float) -> ClaimedTask | None:
    """Take the first available pending task in the fair order
    (`imagine.queue.fairness`), or None when there is none."""
    now = utcnow()
    token = f"{worker_id}:{secrets.token_hex(6)}"
    async with db.write() as session:
        next_id = (
            select(Task.id)
            .where(Task.status == PENDING, Task.available_at <= now)
            .order_by(*CLAIM_ORDER)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        row = (
            await session.execute(
                update(Task)
                .where(Task.id == next_id, Task.status == PENDING)
                .values(
                    status=PROCESSING,
                    attempts=Task.attempts + 1,
                    lease_owner=token,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    started_at=now,
                    updated_at=now,
                )
                .returning(
                    Task.id,
                    Task.account_id,
                    Task.request,
                    Task.attempts,
                    Task.max_attempts,
                    Task.engine,
                    Task.test_outcome,
                    Task.engine_state,
                    Task.available_at,
                    Task.traceparent,
                )
            )
        ).first()
    if row is None:
        return None
    _observe_wait(row.engine, row.available_at, now)
    return ClaimedTask(
        task_id=row.id,
        account_id=row.account_id,
        request=GenerationRequest.from_json(row.request),
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        lease_token=token,
        engine=row.engine,
        test_outcome=row.test_outcome,
        engine_state=row.engine_state or {},
        traceparent=row.traceparent,
    )


def _observe_wait(engine: str, available_at: datetime | None, claimed_at: datetime) -> None:
    if available_at is not None:
        waited = (claimed_at - available_at).total_seconds()
        metrics.QUEUE_WAIT.labels(engine).observe(max(0.0, waited))


def _owned(claimed: ClaimedTask) -> Any:
    return (
        (Task.id == claimed.task_id)
        & (Task.status == PROCESSING)
        & (Task.lease_owner == claimed.lease_token)
    )


def _owned_uncancelled(claimed: ClaimedTask) -> Any:
    """Owned, and no cancel was asked for: the condition of every worker ending
    other than a cancel."""
    return _owned(claimed) & Task.cancel_requested_at.is_(None)


async def _fenced_update(session: AsyncSession, claimed: ClaimedTask, **values: Any) -> bool:
    result = await session.execute(update(Task).where(_owned_uncancelled(claimed)).values(**values))
    return bool(getattr(result, "rowcount", 0))


async def _cancel_if_requested(session: AsyncSession, claimed: ClaimedTask) -> Ended | None:
    """After a worker's ending found a cancel stamp in its way: end the task
    `cancelled` (refunded) in the same transaction. None: the lease was lost."""
    wanted = _owned(claimed) & Task.cancel_requested_at.is_not(None)
    return await _end(session, wanted, CANCELLED, detail="cancelled while processing")


async def _end(
    session: AsyncSession,
    condition: Any,
    status: str,
    *,
    reason: FailureReason | None = None,
    detail: str | None = None,
    outputs: list[str] | None = None,
) -> Ended | None:
    """Move the task matching `condition` to a final status; None if none matched.
    The caller records the `Ended` once its transaction has committed."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": now,
        "finished_at": now,
        "input_bytes": 0,  # its inputs are deleted once this commits
    }
    if status == COMPLETED:
        values.update(outputs=outputs or [], progress=100)
    else:
        values.update(consumed_credits=0, error_detail=detail)
        if reason is not None:
            values["error_message"] = reason.value
    row = (
        await session.execute(
            update(Task)
            .where(condition)
            .values(**values)
            .returning(Task.id, Task.account_id, Task.cost, Task.callback_url, Task.engine)
        )
    ).first()
    if row is None:
        return None
    refunded = row.cost if status != COMPLETED else 0
    if refunded:
        await in_session(session, ledger.refund, row.account_id, row.id, row.cost)
    if row.callback_url:
        session.add(
            WebhookEvent(
                id=new_id("msg"),
                task_id=row.id,
                account_id=row.account_id,
                event_type=f"task.{status}",
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return Ended(row.id, row.engine, status, reason, refunded)


async def heartbeat(
    db: Database, claimed: ClaimedTask, lease_seconds: float, progress: int
) -> Heartbeat:
    """Extend the lease and record progress; tells whether a cancel was asked for."""
    now = utcnow()
    async with db.write() as session:
        row = (
            await session.execute(
                update(Task)
                .where(_owned(claimed))
                .values(
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    progress=progress,
                    updated_at=now,
                )
                .returning(Task.cancel_requested_at)
            )
        ).first()
    if row is None:
        return Heartbeat(alive=False)
    return Heartbeat(alive=True, cancel_requested=row.cancel_requested_at is not None)


async def save_engine_state(db: Database, claimed: ClaimedTask, state: dict[str, Any]) -> bool:
    """Keep what the engine needs to resume this task on a later attempt; fenced,
    so a worker that lost the task cannot overwrite the new owner's state."""
    async with db.write() as session:
        result = await session.execute(
            update(Task).where(_owned(claimed)).values(engine_state=state, updated_at=utcnow())
        )
    return bool(getattr(result, "rowcount", 0))


async def cancel_requested(db: Database, claimed: ClaimedTask) -> bool:
    """A cheap read between heartbeats, so a cancel takes effect within a second."""
    async with db.read() as session:
        requested = await session.scalar(
            select(Task.cancel_requested_at).where(Task.id == claimed.task_id)
        )
    return requested is not None


async def complete(db: Database, claimed: ClaimedTask, outputs: list[str]) -> str | None:
    """Record the result: `completed`; `cancelled` when its owner's cancel came
    first (the outputs are then not kept); None when another worker owns the
    task now. Repeating a completion whose commit was acknowledged to no one
    (the connection dropped) answers `completed` again, so its files are kept."""
    async with db.write() as session:
        ended = await _end(session, _owned_uncancelled(claimed), COMPLETED, outputs=outputs)
        if ended is None:
            ended = await _cancel_if_requested(session, claimed)
        row = None
        if ended is None:
            row = (
                await session.execute(
                    select(Task.status, Task.outputs).where(Task.id == claimed.task_id)
                )
            ).first()
    if _recorded(ended):
        assert ended is not None
        return ended.status
    if row is not None and row.status == COMPLETED and row.outputs == outputs:
        return COMPLETED  # an earlier try of this same ending committed
    return None


async def fail(
    db: Database,
    claimed: ClaimedTask,
    reason: FailureReason,
    detail: str,
    *,
    retry_after: float | None,
    refusal: Refusal | None = None,
) -> str | None:
    """End an attempt that failed. With `retry_after` and attempts left, the task
    goes back to the queue; otherwise it fails for good and is refunded, and a
    content `refusal` is recorded in the same transaction; a cancel asked for
    meanwhile ends it `cancelled` instead.
    Returns the new status, or None when the lease was already lost."""
    now = utcnow()
    ended: Ended | None = None
    cancelled: Ended | None = None
    async with db.write() as session:
        if retry_after is not None and claimed.attempt < claimed.max_attempts:
            moved = await _fenced_update(
                session,
                claimed,
                status=PENDING,
                lease_owner=None,
                lease_expires_at=None,
                error_detail=detail,
                available_at=now + timedelta(seconds=retry_after),
                updated_at=now,
            )
            if moved:
                return PENDING
            cancelled = await _cancel_if_requested(session, claimed)
        else:
            ended = await _end(
                session, _owned_uncancelled(claimed), FAILED, reason=reason, detail=detail
            )
            if ended is None:
                cancelled = await _cancel_if_requested(session, claimed)
            elif refusal is not None:
                await add_refusal(session, claimed.task_id, refusal)
    if cancelled is not None:
        _recorded(cancelled)
        return CANCELLED
    return FAILED if _recorded(ended) else None


async def cancel_running(db: Database, claimed: ClaimedTask) -> bool:
    """The engine stopped because its owner asked: cancelled and refunded."""
    async with db.write() as session:
        ended = await _end(session, _owned(claimed), CANCELLED, detail="cancelled while processing")
    return _recorded(ended)


async def cancel_pending(session: AsyncSession, task_id: str) -> Ended | None:
    """Cancel a task no worker holds yet, inside the caller's transaction (which
    records the `Ended` once committed)."""
    condition = (Task.id == task_id) & (Task.status == PENDING)
    return await _end(session, condition, CANCELLED, detail="cancelled while pending")


async def release(db: Database, claimed: ClaimedTask) -> str | None:
    """Give a task back untouched (graceful shutdown): the attempt does not count.
    `pending`, or `cancelled` when its owner asked; None when the lease was lost."""
    now = utcnow()
    async with db.write() as session:
        released = await _fenced_update(
            session,
            claimed,
            status=PENDING,
            attempts=Task.attempts - 1,
            lease_owner=None,
            lease_expires_at=None,
            available_at=now,
            updated_at=now,
        )
        cancelled = None if released else await _cancel_if_requested(session, claimed)
    if released:
        return PENDING
    return CANCELLED if _recorded(cancelled) else None


async def recover_expired(db: Database) -> int:
    """Put tasks whose worker vanished back in the queue, or end them (with a
    refund) when they used their last attempt or their owner asked to cancel.
    Any live worker runs this."""
    now = utcnow()
    recovered = 0
    async with db.read() as session:
        expired = (
            await session.execute(
                select(
                    Task.id,
                    Task.lease_owner,
                    Task.attempts,
                    Task.max_attempts,
                    Task.cancel_requested_at,
                    Task.engine,
                ).where(Task.status == PROCESSING, Task.lease_expires_at < now)
            )
        ).all()
    for row in expired:
        still_expired = (
            (Task.id == row.id)
            & (Task.status == PROCESSING)
            & (Task.lease_owner == row.lease_owner)
            & (Task.lease_expires_at < now)
        )
        ending: Ended | None = None
        async with db.write() as session:
            if row.cancel_requested_at is not None:
                action = "cancelled"
                ending = await _end(
                    session, still_expired, CANCELLED, detail="cancelled; worker stopped responding"
                )
                ended = ending is not None
            elif row.attempts >= row.max_attempts:
                action = "failed"
                ending = await _end(
                    session,
                    still_expired,
                    FAILED,
                    reason=FailureReason.BUILD_FAILED,
                    detail="lease expired on the last attempt",
                )
                ended = ending is not None
            else:
                action = "requeued"
                result = await session.execute(
                    update(Task)
                    .where(still_expired)
                    .values(
                        status=PENDING,
                        lease_owner=None,
                        lease_expires_at=None,
                        error_detail="lease expired: the worker stopped responding",
                        available_at=now,
                        updated_at=now,
                    )
                )
                ended = bool(getattr(result, "rowcount", 0))
        if ended:
            # Counted by the process that found it: the dead one counts nothing.
            metrics.LEASE_EXPIRED.labels(row.engine, action).inc()
            _recorded(ending)
        recovered += ended
    return recovered
