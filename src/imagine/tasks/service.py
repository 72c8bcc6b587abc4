"""Submitting a task (the charge and the task in one transaction) and reading it back."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select, tuple_
from sqlalchemy.exc import IntegrityError

from imagine.accounts.service import Principal
from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import IdempotencyRecord, Task
from imagine.errors import Conflict, InsufficientCredits, InvalidRequest, NotFound, TaskFinished
from imagine.ids import new_id, utcnow
from imagine.queue import repository as queue
from imagine.tasks.schemas import GenerationRequest
from imagine.tasks.states import COMPLETED, FINISHED, PENDING, PROCESSING


@dataclass(frozen=True)
class SubmitPolicy:
    cost: int
    engine: str
    max_attempts: int
    idempotency_ttl: timedelta


def request_fingerprint(request: GenerationRequest) -> str:
    canonical = json.dumps(request.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit(
    db: Database,
    principal: Principal,
    request: GenerationRequest,
    policy: SubmitPolicy,
    idempotency_key: str | None = None,
    test_outcome: str | None = None,
) -> str:
    """Charge and enqueue one generation; returns the task id.

    Debit, ledger row, task row and idempotency record commit together or not
    at all. With an `Idempotency-Key`, a repeat of the same request returns the
    first task without charging again; a different request under the same key
    is a conflict. Two concurrent first uses race on the record's primary key:
    the loser sees the winner's record on its second pass.
    """
    fingerprint = request_fingerprint(request) if idempotency_key else ""
    for _ in range(2):
        try:
            return await _submit_once(
                db, principal, request, policy, idempotency_key, fingerprint, test_outcome
            )
        except IntegrityError:
            if idempotency_key is None:
                raise
    raise Conflict("A request with this Idempotency-Key is still being processed")


async def _submit_once(
    db: Database,
    principal: Principal,
    request: GenerationRequest,
    policy: SubmitPolicy,
    idempotency_key: str | None,
    fingerprint: str,
    test_outcome: str | None,
) -> str:
    now = utcnow()
    async with db.write() as session:
        if idempotency_key is not None:
            record = await session.get(IdempotencyRecord, (principal.account_id, idempotency_key))
            if record is not None and record.created_at > now - policy.idempotency_ttl:
                if record.request_hash != fingerprint:
                    raise Conflict("This Idempotency-Key was already used with a different request")
                return record.task_id
            if record is not None:
                await session.execute(
                    delete(IdempotencyRecord).where(
                        IdempotencyRecord.account_id == principal.account_id,
                        IdempotencyRecord.key == idempotency_key,
                    )
                )
        task_id = new_id("task")
        charged = policy.cost > 0
        if charged and not await ledger.debit(session, principal.account_id, task_id, policy.cost):
            raise InsufficientCredits(
                f"Insufficient credits: this generation costs {policy.cost} credits"
            )
        session.add(
            Task(
                id=task_id,
                account_id=principal.account_id,
                status=PENDING,
                request=request.to_json(),
                cost=policy.cost,
                consumed_credits=policy.cost,
                engine=policy.engine,
                outputs=[],
                progress=0,
                attempts=0,
                max_attempts=policy.max_attempts,
                created_at=now,
                updated_at=now,
                available_at=now,
                is_test=principal.is_test,
                test_outcome=test_outcome,
                callback_url=request.callback_url,
            )
        )
        if idempotency_key is not None:
            await session.flush()
            session.add(
                IdempotencyRecord(
                    account_id=principal.account_id,
                    key=idempotency_key,
                    request_hash=fingerprint,
                    task_id=task_id,
                    created_at=now,
                )
            )
        return task_id


# Built once (see accounts.service._KEY_BY_HASH): status polling is the hottest read.
_TASK_BY_ID = select(Task.__table__).where(
    Task.id == bindparam("task_id"), Task.account_id == bindparam("account_id")
)
_QUEUE_COUNTS = select(
    select(func.count())
    .where(Task.status == PENDING, Task.available_at < bindparam("available_at"))
    .scalar_subquery()
    .label("ahead"),
    select(func.count()).where(Task.status == PROCESSING).scalar_subquery().label("running"),
)


async def get_task(db: Database, principal: Principal, task_id: str) -> Task:
    """The caller's task; another account's task is indistinguishable from none."""
    row = await db.read_one(_TASK_BY_ID, {"task_id": task_id, "account_id": principal.account_id})
    if row is None:
        raise NotFound("Task not found")
    return Task(**row)


def isoformat(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as echoed to its owner; inline images are summarised, not repeated."""
    shown = dict(request)
    images = shown.get("images") or []
    if images:
        shown["images"] = [
            f"{url.split(',', 1)[0]},…({len(url)} characters)" if url.startswith("data:") else url
            for url in images
        ]
    else:
        shown.pop("images", None)
    return shown


def status_view(task: Task, file_url: Callable[[str], str]) -> dict[str, Any]:
    """The `data` object of `GET /v1/status`: the seed's fields first, then additive ones."""
    return {
        "consumed_credits": task.consumed_credits,
        "created_at": isoformat(task.created_at),
        "status": task.status,
        "task_id": task.id,
        "error_message": task.error_message,
        "request": public_request(task.request),
        "response": [file_url(key) for key in task.outputs] if task.status == COMPLETED else [],
        "progress": task.progress,
        "updated_at": isoformat(task.updated_at),
        "engine": task.engine,
        "cancel_requested": task.cancel_requested_at is not None,
        "test": task.is_test,
    }


async def cancel(db: Database, principal: Principal, task_id: str) -> Task:
    """Cancel the caller's task. Pending: cancelled and refunded now. Processing:
    the worker is asked to stop (it refunds when the engine stops, within
    seconds). Finished: `TaskFinished`, nothing changes."""
    async with db.write() as session:
        task = await session.scalar(
            select(Task)
            .where(Task.id == task_id, Task.account_id == principal.account_id)
            .with_for_update()
        )
        if task is None:
            raise NotFound("Task not found")
        if task.status in FINISHED:
            raise TaskFinished(f"Task is already {task.status}; nothing to cancel")
        if task.status == PENDING:
            await queue.cancel_pending(session, task_id)
        elif task.cancel_requested_at is None:
            task.cancel_requested_at = utcnow()
    return await get_task(db, principal, task_id)


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Task]
    has_more: bool


async def list_tasks(
    db: Database, principal: Principal, *, status: str | None, limit: int, after: str | None
) -> TaskPage:
    """The caller's tasks, newest first. The cursor is the last task id seen:
    rows are ordered by (created_at, id), so tasks inserted meanwhile land
    before the cursor and a page never repeats or skips one."""
    async with db.read() as session:
        query = select(Task).where(
            Task.account_id == principal.account_id, Task.is_test == principal.is_test
        )
        if status is not None:
            query = query.where(Task.status == status)
        if after is not None:
            anchor = await session.scalar(
                select(Task.created_at).where(
                    Task.id == after, Task.account_id == principal.account_id
                )
            )
            if anchor is None:
                raise InvalidRequest("The after parameter must be a task id from a previous page")
            query = query.where(tuple_(Task.created_at, Task.id) < tuple_(anchor, after))
        rows = list(
            await session.scalars(
                query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)
            )
        )
    return TaskPage(tasks=rows[:limit], has_more=len(rows) > limit)


class RecentDurations:
    """How long recent tasks took, averaged and cached briefly: polls of pending
    tasks ask for it constantly, and it changes only as tasks finish."""

    SAMPLE = 50
    TTL_SECONDS = 5.0

    def __init__(self) -> None:
        self._average: float | None = None
        self._expires = 0.0

    async def average(self, db: Database) -> float | None:
        now = time.monotonic()
        if now >= self._expires:
            async with db.read() as session:
                durations = [
                    (finished - started).total_seconds()
                    for started, finished in await session.execute(
                        select(Task.started_at, Task.finished_at)
                        .where(Task.status == COMPLETED, Task.finished_at.is_not(None))
                        .order_by(Task.finished_at.desc())
                        .limit(self.SAMPLE)
                    )
                    if started is not None and finished is not None
                ]
            self._average = sum(durations) / len(durations) if durations else None
            self._expires = now + self.TTL_SECONDS
        return self._average


async def progress_estimate(db: Database, task: Task, recent: RecentDurations) -> dict[str, Any]:
    """For an unfinished task: its place in the queue (claimed oldest first) and a
    rough time to completion from how long recent tasks took."""
    average = await recent.average(db)
    if task.status == PROCESSING:
        eta = None if average is None else average * (100 - task.progress) / 100
        return {"queue_position": 0, "eta_seconds": _rounded(eta)}
    counts = await db.read_one(_QUEUE_COUNTS, {"available_at": task.available_at})
    assert counts is not None
    position = int(counts["ahead"]) + 1
    slots = max(1, int(counts["running"]))
    eta = None if average is None else average * (position / slots + 1)
    return {"queue_position": position, "eta_seconds": _rounded(eta)}


def _rounded(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds))
