"""Cancel is linearizable against a worker's ending, on SQLite and PostgreSQL.

Each round claims a task and then runs, concurrently and on separate
connections, the owner's cancel and the worker's ending (a completion, a
retryable failure or a final failure), each after a random pause of a few
milliseconds. A cancel answered 200 must leave the task `cancelled` and
refunded whatever the worker wrote; a cancel answered 409 must find the
worker's ending already committed. Hundreds of rounds on each backend.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from imagine.accounts import service as accounts
from imagine.accounts.service import Principal
from imagine.db import schema
from imagine.db.database import Database
from imagine.db.models import LedgerEntry, Task
from imagine.errors import TaskFinished
from imagine.failures import FailureReason
from imagine.queue import repository as queue
from imagine.queue.repository import ClaimedTask
from imagine.tasks import service
from imagine.tasks.schemas import GenerationRequest

from databases import PostgresDatabases
from helpers import balance_and_ledger

ROUNDS = 200
COST = 40
REQUEST = GenerationRequest(
    mode="normal", prompt="p", ratio="1:1", images=(), duration=1, resolution="480p", seed=None
)
POLICY = service.SubmitPolicy(
    cost=COST,
    engine="preview",
    max_attempts=3,
    idempotency_ttl=timedelta(days=1),
    queue_quantum=60.0,
)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'races.db'}")
        await schema.upgrade(database)
        yield database
        await database.dispose()
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    url = await asyncio.to_thread(databases.create)
    database = Database(url)
    yield database
    await database.dispose()
    await asyncio.to_thread(databases.drop, url)


async def _cancel(db: Database, principal: Principal, task_id: str, pause: float) -> int:
    await asyncio.sleep(pause)
    try:
        await service.cancel(db, principal, task_id)
    except TaskFinished:
        return 409
    return 200


async def _end(db: Database, claimed: ClaimedTask, how: str, pause: float) -> str | None:
    await asyncio.sleep(pause)
    if how == "complete":
        return await queue.complete(db, claimed, [f"{claimed.task_id}/out.mp4"])
    retry_after = 0.0 if how == "retry" else None
    return await queue.fail(db, claimed, FailureReason.NETWORK, how, retry_after=retry_after)


async def _final(db: Database, task_id: str) -> tuple[str, list[str]]:
    async with db.read() as session:
        status = await session.scalar(select(Task.status).where(Task.id == task_id))
        kinds = await session.scalars(
            select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id)
        )
        return str(status), sorted(kinds)


async def test_a_cancel_answered_200_always_ends_cancelled_and_refunded(db: Database) -> None:
    async with db.write() as session:
        issued = await accounts.create_account(session, plan="free", credits=COST * ROUNDS)
    principal = Principal(issued.account_id, "free", issued.key_id)
    rng = random.Random(16)
    seen: Counter[tuple[str, int, str]] = Counter()
    for _ in range(ROUNDS):
        task_id = await service.submit(db, principal, REQUEST, POLICY)
        claimed = await queue.claim(db, "racer", lease_seconds=60)
        assert claimed is not None and claimed.task_id == task_id
        how = rng.choice(["complete", "complete", "retry", "fail"])
        answer, ended = await asyncio.gather(
            _cancel(db, principal, task_id, rng.uniform(0, 0.004)),
            _end(db, claimed, how, rng.uniform(0, 0.004)),
        )
        if answer == 200 and ended == "pending":  # retried first: still the queue's
            assert await queue.claim(db, "racer", lease_seconds=60) is None
        status, kinds = await _final(db, task_id)
        if answer == 200:
            assert status == "cancelled", (how, ended)
            assert kinds == ["debit", "refund"]
        else:
            assert status == {"complete": "completed", "fail": "failed"}[how], (how, ended)
            assert ended == status
            assert kinds == (["debit"] if status == "completed" else ["debit", "refund"])
        seen[(how, answer, status)] += 1
    balance, total = await balance_and_ledger(db, issued.account_id)
    assert balance == total
    # both orders happened, or the test proved nothing
    assert seen[("complete", 200, "cancelled")] and seen[("complete", 409, "completed")], seen
