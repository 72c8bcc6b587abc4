"""The queue as an operator sees it: how much waits and runs, on which engine,
how old the oldest waiting task is, and what failed lately and why.

Each figure is one indexed query (the queue and finished-task indexes), so
the page stays cheap however many tasks the table holds. `waiting_and_running`
is the part the metrics read at every scrape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.db.database import Database
from imagine.db.models import Task
from imagine.ids import utcnow
from imagine.tasks.states import FAILED, FINISHED, PENDING, PROCESSING

RECENT = timedelta(hours=24)


@dataclass(frozen=True)
class EngineLoad:
    engine: str
    pending: int
    processing: int
    finished: dict[str, int]
    """Tasks that ended in the last 24 hours, by status."""


@dataclass(frozen=True)
class Waiting:
    """What waits and runs now, per engine."""

    counts: dict[tuple[str, str], int]
    """(engine, status) → tasks, for pending and processing."""
    oldest_pending_at: dict[str, datetime]
    """engine → creation of its oldest pending task."""


async def waiting_and_running(session: AsyncSession) -> Waiting:
    """One pass over the unfinished tasks (a range of the queue index)."""
    rows = await session.execute(
        select(Task.engine, Task.status, func.count(), func.min(Task.created_at))
        .where(Task.status.in_((PENDING, PROCESSING)))
        .group_by(Task.engine, Task.status)
    )
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, datetime] = {}
    for engine, status, count, created_at in rows:
        counts[engine, status] = int(count)
        if status == PENDING and created_at is not None:
            oldest[engine] = created_at
    return Waiting(counts, oldest)


@dataclass(frozen=True)
class Failure:
    task_id: str
    account_id: str
    engine: str
    error_message: str | None
    error_detail: str | None
    attempts: int
    finished_at: datetime | None


@dataclass(frozen=True)
class QueueOverview:
    pending: int
    processing: int
    oldest_pending_at: datetime | None
    engines: list[EngineLoad]
    recent_failures: list[Failure]

    def oldest_pending_seconds(self, now: datetime | None = None) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, ((now or utcnow()) - self.oldest_pending_at).total_seconds())


async def queue_overview(db: Database, *, failures: int = 20) -> QueueOverview:
    since = utcnow() - RECENT
    async with db.read() as session:
        waiting = await waiting_and_running(session)
        ended = await session.execute(
            select(Task.engine, Task.status, func.count())
            .where(Task.status.in_(sorted(FINISHED)), Task.finished_at >= since)
            .group_by(Task.engine, Task.status)
        )
        failed = await session.scalars(
            select(Task)
            .where(Task.status == FAILED)
            .order_by(Task.finished_at.desc())
            .limit(failures)
        )
        recent_failures = [
            Failure(
                task_id=task.id,
                account_id=task.account_id,
                engine=task.engine,
                error_message=task.error_message,
                error_detail=task.error_detail,
                attempts=task.attempts,
                finished_at=task.finished_at,
            )
            for task in failed
        ]
    loads: dict[str, dict[str, int]] = {}
    live = [(engine, status, count) for (engine, status), count in waiting.counts.items()]
    for engine, status, count in [*live, *ended]:
        loads.setdefault(engine, {})[status] = int(count)
    engines = [
        EngineLoad(
            engine=engine,
            pending=counts.get(PENDING, 0),
            processing=counts.get(PROCESSING, 0),
            finished={status: counts.get(status, 0) for status in sorted(FINISHED)},
        )
        for engine, counts in sorted(loads.items())
    ]
    return QueueOverview(
        pending=sum(load.pending for load in engines),
        processing=sum(load.processing for load in engines),
        oldest_pending_at=min(waiting.oldest_pending_at.values(), default=None),
        engines=engines,
        recent_failures=recent_failures,
    )
