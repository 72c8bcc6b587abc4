"""The tasks table as a queue: claim, lease, heartbeat, finish, recover.

A claim gives the task a fresh lease token. Every later write by that worker
names the token, so a worker whose lease expired and was taken over cannot
overwrite the new owner's result (fencing). Ending a task and its refund are
one transaction guarded by the status transition, so a refund happens once.
PostgreSQL claims with `FOR UPDATE SKIP LOCKED`; SQLite's write transactions
are already serialised (`BEGIN IMMEDIATE`), so the same statement is safe there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import Task
from imagine.failures import FailureReason
from imagine.ids import utcnow
from imagine.tasks.schemas import GenerationRequest
from imagine.tasks.service import COMPLETED, FAILED, PENDING, PROCESSING


@dataclass(frozen=True)
class ClaimedTask:
    task_id: str
    account_id: str
    request: GenerationRequest
    attempt: int
    max_attempts: int
    lease_token: str


async def claim(db: Database, worker_id: str, lease_seconds: float) -> ClaimedTask | None:
    """Take the oldest available pending task, or None when there is none."""
    now = utcnow()
    token = f"{worker_id}:{secrets.token_hex(6)}"
    async with db.write() as session:
        next_id = (
            select(Task.id)
            .where(Task.status == PENDING, Task.available_at <= now)
            .order_by(Task.available_at)
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
                .returning(Task.id, Task.account_id, Task.request, Task.attempts, Task.max_attempts)
            )
        ).first()
    if row is None:
        return None
    return ClaimedTask(
        task_id=row.id,
        account_id=row.account_id,
        request=GenerationRequest.from_json(row.request),
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        lease_token=token,
    )


def _owned(claimed: ClaimedTask) -> Any:
    return (
        (Task.id == claimed.task_id)
        & (Task.status == PROCESSING)
        & (Task.lease_owner == claimed.lease_token)
    )


async def _fenced_update(session: AsyncSession, claimed: ClaimedTask, **values: Any) -> bool:
    result = await session.execute(update(Task).where(_owned(claimed)).values(**values))
    return bool(getattr(result, "rowcount", 0))


async def heartbeat(
    db: Database, claimed: ClaimedTask, lease_seconds: float, progress: int
) -> bool:
    """Extend the lease and record progress; False means the lease was lost."""
    now = utcnow()
    async with db.write() as session:
        return await _fenced_update(
            session,
            claimed,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            progress=progress,
            updated_at=now,
        )


async def complete(db: Database, claimed: ClaimedTask, outputs: list[str]) -> bool:
    """Record the result; False means another worker owns the task now."""
    now = utcnow()
    async with db.write() as session:
        return await _fenced_update(
            session,
            claimed,
            status=COMPLETED,
            outputs=outputs,
            progress=100,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            finished_at=now,
        )


async def fail(
    db: Database,
    claimed: ClaimedTask,
    reason: FailureReason,
    detail: str,
    *,
    retry_after: float | None,
) -> str | None:
    """End an attempt that failed. With `retry_after` and attempts left, the task
    goes back to the queue; otherwise it fails for good and is refunded.
    Returns the new status, or None when the lease was already lost."""
    now = utcnow()
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
            return PENDING if moved else None
        ended = await _fail_and_refund(session, _owned(claimed), claimed.task_id, reason, detail)
        return FAILED if ended else None


async def release(db: Database, claimed: ClaimedTask) -> bool:
    """Give a task back untouched (graceful shutdown): the attempt does not count."""
    now = utcnow()
    async with db.write() as session:
        return await _fenced_update(
            session,
            claimed,
            status=PENDING,
            attempts=Task.attempts - 1,
            lease_owner=None,
            lease_expires_at=None,
            available_at=now,
            updated_at=now,
        )


async def recover_expired(db: Database) -> int:
    """Put tasks whose worker vanished back in the queue, or fail them (and
    refund) when they used their last attempt. Any live worker runs this."""
    now = utcnow()
    recovered = 0
    async with db.read() as session:
        expired = (
            await session.execute(
                select(Task.id, Task.lease_owner, Task.attempts, Task.max_attempts).where(
                    Task.status == PROCESSING, Task.lease_expires_at < now
                )
            )
        ).all()
    for row in expired:
        still_expired = (
            (Task.id == row.id)
            & (Task.status == PROCESSING)
            & (Task.lease_owner == row.lease_owner)
            & (Task.lease_expires_at < now)
        )
        async with db.write() as session:
            if row.attempts < row.max_attempts:
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
                recovered += bool(getattr(result, "rowcount", 0))
            else:
                recovered += await _fail_and_refund(
                    session,
                    still_expired,
                    row.id,
                    FailureReason.BUILD_FAILED,
                    "lease expired on the last attempt",
                )
    return recovered


async def _fail_and_refund(
    session: AsyncSession, condition: Any, task_id: str, reason: FailureReason, detail: str
) -> bool:
    now = utcnow()
    row = (
        await session.execute(
            update(Task)
            .where(condition)
            .values(
                status=FAILED,
                error_message=reason.value,
                error_detail=detail,
                consumed_credits=0,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
                finished_at=now,
            )
            .returning(Task.account_id, Task.cost)
        )
    ).first()
    if row is None:
        return False
    if row.cost:
        await ledger.refund(session, row.account_id, task_id, row.cost)
    return True
