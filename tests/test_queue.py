"""The tasks table as a queue, on a real SQLite file: leases, fencing, refunds."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from imagine.accounts import service as accounts
from imagine.accounts.service import Principal
from imagine.db import schema
from imagine.db.database import Database
from imagine.db.models import LedgerEntry, Task
from imagine.engines.preview import PreviewEngine
from imagine.failures import FailureReason
from imagine.queue import repository as queue
from imagine.queue.worker import Worker, WorkerConfig
from imagine.tasks import service
from imagine.tasks.schemas import GenerationRequest

from helpers import balance_and_ledger

REQUEST = GenerationRequest(
    mode="normal", prompt="p", ratio="1:1", images=(), duration=1, resolution="480p", seed=None
)


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    await schema.upgrade(database)
    return database


async def new_task(db: Database, max_attempts: int = 3, credits: int = 100) -> tuple[str, str]:
    async with db.write() as session:
        issued = await accounts.create_account(session, plan="free", credits=credits)
    principal = Principal(issued.account_id, "free", issued.key_id)
    policy = service.SubmitPolicy(
        cost=40,
        engine="preview",
        max_attempts=max_attempts,
        idempotency_ttl=timedelta(days=1),
        queue_quantum=60.0,
    )
    task_id = await service.submit(db, principal, REQUEST, policy)
    return task_id, issued.account_id


async def task_row(db: Database, task_id: str) -> Task:
    async with db.read() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    return task


async def test_claims_oldest_first_and_never_twice(db: Database) -> None:
    first, _ = await new_task(db)
    second, _ = await new_task(db)
    claims = await asyncio.gather(*(queue.claim(db, f"w{i}", 30) for i in range(4)))
    taken = [c.task_id for c in claims if c is not None]
    assert sorted(taken) == sorted([first, second])
    assert (await task_row(db, first)).status == "processing"


async def test_expired_lease_goes_back_and_stale_result_is_rejected(db: Database) -> None:
    task_id, _ = await new_task(db)
    stale = await queue.claim(db, "a", lease_seconds=0.05)
    assert stale is not None and stale.attempt == 1
    await asyncio.sleep(0.1)
    assert await queue.recover_expired(db) == 1
    fresh = await queue.claim(db, "b", lease_seconds=30)
    assert fresh is not None and fresh.task_id == task_id and fresh.attempt == 2

    assert not (await queue.heartbeat(db, stale, 30, 50)).alive
    assert not await queue.complete(db, stale, ["stale.mp4"])
    assert await queue.complete(db, fresh, ["fresh.mp4"])
    row = await task_row(db, task_id)
    assert row.status == "completed" and row.outputs == ["fresh.mp4"]


async def test_last_attempt_expiry_fails_and_refunds_exactly_once(db: Database) -> None:
    task_id, account_id = await new_task(db, max_attempts=1)
    assert await queue.claim(db, "a", lease_seconds=0.05) is not None
    await asyncio.sleep(0.1)
    recovered = await asyncio.gather(*(queue.recover_expired(db) for _ in range(3)))
    assert sum(recovered) == 1
    row = await task_row(db, task_id)
    assert row.status == "failed"
    assert row.error_message == "grok imagine build failed"
    assert row.consumed_credits == 0
    assert await balance_and_ledger(db, account_id) == (100, 100)
    async with db.read() as session:
        kinds = list(
            await session.scalars(select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id))
        )
    assert sorted(kinds) == ["debit", "refund"]


async def test_retryable_failure_requeues_until_attempts_run_out(db: Database) -> None:
    task_id, account_id = await new_task(db, max_attempts=2)
    first = await queue.claim(db, "a", 30)
    assert first is not None
    outcome = await queue.fail(db, first, FailureReason.NETWORK, "flaky", retry_after=0)
    assert outcome == "pending"
    assert await balance_and_ledger(db, account_id) == (60, 60)
    second = await queue.claim(db, "b", 30)
    assert second is not None and second.attempt == 2
    outcome = await queue.fail(db, second, FailureReason.NETWORK, "flaky", retry_after=0)
    assert outcome == "failed"
    assert await queue.fail(db, second, FailureReason.NETWORK, "again", retry_after=None) is None
    row = await task_row(db, task_id)
    assert row.error_message == "Network error, please try again later."
    assert await balance_and_ledger(db, account_id) == (100, 100)


async def test_retry_waits_for_its_backoff(db: Database) -> None:
    await new_task(db, max_attempts=2)
    claimed = await queue.claim(db, "a", 30)
    assert claimed is not None
    await queue.fail(db, claimed, FailureReason.NETWORK, "flaky", retry_after=60)
    assert await queue.claim(db, "b", 30) is None


async def test_release_hands_the_task_back_without_using_an_attempt(db: Database) -> None:
    task_id, _ = await new_task(db, max_attempts=1)
    claimed = await queue.claim(db, "a", 30)
    assert claimed is not None
    assert await queue.release(db, claimed)
    row = await task_row(db, task_id)
    assert (row.status, row.attempts, row.lease_owner) == ("pending", 0, None)
    again = await queue.claim(db, "b", 30)
    assert again is not None and again.attempt == 1


async def test_engine_state_survives_a_release_and_only_the_owner_may_save_it(
    db: Database,
) -> None:
    await new_task(db)
    first = await queue.claim(db, "a", 30)
    assert first is not None and first.engine_state == {}
    assert await queue.save_engine_state(db, first, {"upstream": "req-1"})
    assert await queue.release(db, first)
    second = await queue.claim(db, "b", 30)
    assert second is not None and second.engine_state == {"upstream": "req-1"}
    assert not await queue.save_engine_state(db, first, {"upstream": "stale"})
    again = await task_row(db, second.task_id)
    assert again.engine_state == {"upstream": "req-1"}


async def test_a_wakeup_while_a_claim_comes_back_empty_is_not_lost(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit may commit and wake the workers while a worker's claim is still
    in flight and finds nothing; the worker must look again at once, not after
    its poll interval (an hour here)."""
    wakeup = asyncio.Event()
    claims = 0
    looked_again = asyncio.Event()

    async def claim(*_args: object) -> None:
        nonlocal claims
        claims += 1
        if claims == 1:
            wakeup.set()  # the submit's wake-up, during this claim
        else:
            looked_again.set()

    monkeypatch.setattr(queue, "claim", claim)
    config = WorkerConfig(
        lease_seconds=30, heartbeat_seconds=10, poll_interval=3600, task_timeout=60
    )
    unused: Any = None  # nothing is claimed, so nothing is fetched, run or stored
    worker = Worker(db, PreviewEngine(), unused, unused, config, tmp_path, wakeup)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(looked_again.wait(), 30)
    worker.stop()
    await running
