"""The one-statement submit on PostgreSQL writes exactly what the ordinary
submit writes, and leaves every other case to it; submits that arrive
together share one statement and are charged and queued as if one by one.

`_submit_once` (the ordinary unit) is made to fail where the one statement
must have done the work, and counted where it must decide, so each test
knows which path answered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from imagine.accounts import service as accounts
from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Account, IdempotencyRecord, LedgerEntry, Task
from imagine.db.prepared import Tx
from imagine.errors import Conflict, InsufficientCredits
from imagine.tasks import one_statement_submit, service
from imagine.tasks.schemas import GenerationRequest

from databases import PostgresDatabases
from helpers import balance_and_ledger

COST = 40
POLICY = service.SubmitPolicy(
    cost=COST,
    engine="preview",
    max_attempts=3,
    idempotency_ttl=timedelta(days=1),
    queue_quantum=60.0,
)
FREE = service.SubmitPolicy(**{**POLICY.__dict__, "cost": 0})


def request(prompt: str = "p") -> GenerationRequest:
    return GenerationRequest(
        mode="normal", prompt=prompt, ratio="1:1", images=(), duration=1, resolution="480p", seed=7
    )


@pytest.fixture
async def db(postgres: PostgresDatabases) -> AsyncIterator[Database]:
    url = await asyncio.to_thread(postgres.create)
    database = Database(url)
    yield database
    await database.dispose()
    await asyncio.to_thread(postgres.drop, url)


@pytest.fixture
def ordinary(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each time the ordinary unit runs, by task id."""
    ran: list[str] = []
    original = service._submit_once

    def counted(tx: Tx, submission: Any) -> str:
        ran.append(submission.task_id)
        return original(tx, submission)

    monkeypatch.setattr(service, "_submit_once", counted)
    return ran


async def principal(db: Database, credits: int, *, test: bool = False) -> Principal:
    async with db.write() as session:
        issued = await accounts.create_account(session, plan="free", credits=credits)
    return Principal(issued.account_id, "free", issued.key_id, is_test=test)


async def rows(db: Database, task_id: str) -> tuple[Task, list[LedgerEntry]]:
    async with db.read() as session:
        task = await session.get(Task, task_id)
        entries = list(
            await session.scalars(select(LedgerEntry).where(LedgerEntry.task_id == task_id))
        )
    assert task is not None
    return task, entries


async def test_a_new_task_is_written_in_one_statement_as_the_ordinary_unit_writes_it(
    db: Database, ordinary: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await principal(db, COST * 3)
    fast_id = await service.submit(db, who, request(), POLICY)
    assert ordinary == []
    # The same submit through the ordinary unit, for comparison.
    monkeypatch.setattr(service, "_in_one_statement", lambda *_: _false())
    slow_id = await service.submit(db, who, request(), POLICY)
    assert ordinary == [slow_id]

    (fast, fast_ledger), (slow, slow_ledger) = await rows(db, fast_id), await rows(db, slow_id)
    skip = {"id", "created_at", "updated_at", "available_at", "fair_at"}
    columns = [c.key for c in Task.__table__.columns if c.key not in skip]
    assert {c: getattr(fast, c) for c in columns} == {c: getattr(slow, c) for c in columns}
    assert fast.created_at == fast.updated_at == fast.available_at
    assert slow.fair_at == fast.fair_at + POLICY.queue_quantum  # the account's clock moved
    assert [(e.kind, e.amount, e.balance_after) for e in fast_ledger] == [("debit", -40, 80)]
    assert [(e.kind, e.amount, e.balance_after) for e in slow_ledger] == [("debit", -40, 40)]
    assert await balance_and_ledger(db, who.account_id) == (COST, COST)


async def _false() -> bool:
    return False


async def test_known_keys_short_credits_and_test_keys(db: Database, ordinary: list[str]) -> None:
    who = await principal(db, COST * 2)
    first = await service.submit(db, who, request(), POLICY, idempotency_key="k1")
    assert ordinary == []
    async with db.read() as session:
        record = await session.get(IdempotencyRecord, (who.account_id, "k1"))
    assert record is not None and record.task_id == first

    # A known key: the ordinary unit answers (the same task, or a conflict).
    assert await service.submit(db, who, request(), POLICY, idempotency_key="k1") == first
    with pytest.raises(Conflict):
        await service.submit(db, who, request("other"), POLICY, idempotency_key="k1")
    assert len(ordinary) == 2

    await service.submit(db, who, request(), POLICY)
    with pytest.raises(InsufficientCredits):  # credits short: the ordinary unit says so
        await service.submit(db, who, request(), POLICY, idempotency_key="k2")
    assert len(ordinary) == 3
    assert await balance_and_ledger(db, who.account_id) == (0, 0)
    async with db.read() as session:
        assert await session.get(IdempotencyRecord, (who.account_id, "k2")) is None

    tester = await principal(db, 0, test=True)
    free = await service.submit(db, tester, request(), FREE)
    assert len(ordinary) == 3
    task, ledger = await rows(db, free)
    assert (task.is_test, task.cost, ledger) == (True, 0, [])
    async with db.read() as session:
        account = await session.get(Account, tester.account_id)
    assert account is not None and account.test_fair_at == task.fair_at > 0


async def test_concurrent_first_uses_of_a_key_make_one_task(
    db: Database, ordinary: list[str]
) -> None:
    who = await principal(db, COST * 20)
    answers = await asyncio.gather(
        *(service.submit(db, who, request(), POLICY, idempotency_key="same") for _ in range(20)),
        return_exceptions=True,
    )
    ids = {a for a in answers if isinstance(a, str)}
    assert len(ids) == 1
    assert all(isinstance(a, str | Conflict) for a in answers), answers
    assert await balance_and_ledger(db, who.account_id) == (COST * 19, COST * 19)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the size of each batch the one statement takes."""
    sizes: list[int] = []
    original = one_statement_submit._submit_together

    async def counted(db: Database, tasks: list[Any]) -> list[bool]:
        sizes.append(len(tasks))
        return await original(db, tasks)

    monkeypatch.setattr(one_statement_submit, "_submit_together", counted)
    return sizes


async def test_submits_arriving_together_are_charged_and_queued_as_if_one_by_one(
    db: Database, ordinary: list[str], batches: list[int]
) -> None:
    rich, poor, broke = [await principal(db, COST * n) for n in (5, 3, 0)]
    calls = [rich] * 10 + [poor] * 10 + [broke] * 5
    answers = await asyncio.gather(
        *(service.submit(db, who, request(f"{i}"), POLICY) for i, who in enumerate(calls)),
        return_exceptions=True,
    )
    assert max(batches) > 1, batches  # they did share statements
    accepted = {who.account_id: 0 for who in (rich, poor, broke)}
    for who, answer in zip(calls, answers, strict=True):
        if isinstance(answer, str):
            accepted[who.account_id] += 1
        else:
            assert isinstance(answer, InsufficientCredits), answer
    assert list(accepted.values()) == [5, 3, 0]
    assert len(ordinary) == 17  # only the refused went the ordinary way, to be told why

    for who, count in ((rich, 5), (poor, 3)):
        assert await balance_and_ledger(db, who.account_id) == (0, 0)
        async with db.read() as session:
            debits = list(
                await session.scalars(
                    select(LedgerEntry.balance_after)
                    .where(LedgerEntry.account_id == who.account_id, LedgerEntry.kind == "debit")
                    .order_by(LedgerEntry.id)
                )
            )
            places = sorted(
                await session.scalars(select(Task.fair_at).where(Task.account_id == who.account_id))
            )
            clock = await session.scalar(
                select(Account.fair_at).where(Account.id == who.account_id)
            )
        # Each debit's balance after is the one before it less one cost, as in turn.
        assert debits == [COST * n for n in range(count - 1, -1, -1)]
        # One quantum apart, the account's clock at the last of them.
        gaps = [later - earlier for earlier, later in itertools.pairwise(places)]
        assert gaps == pytest.approx([POLICY.queue_quantum] * (count - 1))
        assert clock == places[-1]


async def test_a_key_repeated_within_one_batch_leaves_the_others_in_it_alone(
    db: Database, ordinary: list[str], batches: list[int]
) -> None:
    who = await principal(db, COST * 100)
    answers = await asyncio.gather(
        *(
            service.submit(db, who, request(), POLICY, idempotency_key="same" if i % 2 else None)
            for i in range(12)
        ),
        return_exceptions=True,
    )
    keyed = {a for i, a in enumerate(answers) if i % 2 and isinstance(a, str)}
    plain = [a for i, a in enumerate(answers) if not i % 2]
    assert len(keyed) == 1
    assert all(isinstance(a, str | Conflict) for a in answers), answers
    assert all(isinstance(a, str) for a in plain) and len(set(plain)) == 6
    assert max(batches) > 1, batches
    assert len(ordinary) <= 5  # at most the repeats of the key went the ordinary way
    assert await balance_and_ledger(db, who.account_id) == (COST * 93, COST * 93)
