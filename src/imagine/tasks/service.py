"""Submitting a task (the charge and the task in one transaction) and reading it back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from imagine.accounts.service import Principal
from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import IdempotencyRecord, Task
from imagine.errors import Conflict, InsufficientCredits, NotFound
from imagine.ids import new_id, utcnow
from imagine.tasks.schemas import GenerationRequest

PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "processing",
    "completed",
    "failed",
    "cancelled",
)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})


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
            return await _submit_once(db, principal, request, policy, idempotency_key, fingerprint)
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
        if not await ledger.debit(session, principal.account_id, task_id, policy.cost):
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


async def get_task(db: Database, principal: Principal, task_id: str) -> Task:
    """The caller's task; another account's task is indistinguishable from none."""
    async with db.read() as session:
        task = await session.scalar(
            select(Task).where(Task.id == task_id, Task.account_id == principal.account_id)
        )
    if task is None:
        raise NotFound("Task not found")
    return task


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
    }
