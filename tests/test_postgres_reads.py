"""PostgreSQL's hot reads: one pool however many first reads race, a
connection lost under it (a restart, an idle-connection killer) is replaced,
and polls that arrive together share one read."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import bindparam, select

from imagine.accounts import service as accounts
from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Account
from imagine.db.prepared import Row
from imagine.errors import NotFound
from imagine.tasks import service
from imagine.tasks.schemas import GenerationRequest

ACCOUNT = select(Account.id, Account.balance, Account.created_at).where(
    Account.id == bindparam("account_id")
)
pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def backends(database_url: str) -> int:
    """Connections to this test's database other than the one counting."""
    counter = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        count = await counter.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await counter.close()
    return int(count)


def test_racing_first_reads_share_one_pool_and_survive_lost_connections(
    database_url: str,
) -> None:
    async def scenario() -> None:
        db = Database(database_url)
        try:
            async with db.write() as session:
                issued = await accounts.create_account(session, plan="free", credits=120)
            rows = await asyncio.gather(
                *(db.read_one(ACCOUNT, {"account_id": issued.account_id}) for _ in range(100))
            )
            assert all(row is not None and row["balance"] == 120 for row in rows)
            assert rows[0] is not None and rows[0]["created_at"].tzinfo is not None
            # One pool of at most 10, plus the engine's own few connections.
            assert await backends(database_url) <= 10 + 5

            # Kill every other connection to the database, as a restart would.
            killer = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            try:
                await killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await killer.close()
            again = await db.read_one(ACCOUNT, {"account_id": issued.account_id})
            assert again is not None and again["balance"] == 120
            assert await db.read_one(ACCOUNT, {"account_id": "acct_missing"}) is None
        finally:
            await db.dispose()

    asyncio.run(scenario())


def ask(prompt: str) -> GenerationRequest:
    return GenerationRequest(
        mode="normal", prompt=prompt, ratio="1:1", images=(), duration=1, resolution="480p", seed=1
    )


def test_polls_arriving_together_share_a_read_and_see_only_their_own_tasks(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    original = service._tasks_by_ids

    async def counted(db: Database, task_ids: list[str]) -> list[Row | None]:
        sizes.append(len(task_ids))
        return await original(db, task_ids)

    monkeypatch.setattr(service, "_tasks_by_ids", counted)
    policy = service.SubmitPolicy(
        cost=0,
        engine="preview",
        max_attempts=1,
        idempotency_ttl=timedelta(days=1),
        queue_quantum=1.0,
    )

    async def scenario() -> None:
        db = Database(database_url)
        try:
            owners = []
            for _ in range(2):
                async with db.write() as session:
                    issued = await accounts.create_account(session, plan="free", credits=0)
                owners.append(Principal(issued.account_id, "free", issued.key_id))
            mine = [await service.submit(db, owners[0], ask(f"{i}"), policy) for i in range(20)]
            theirs = await service.submit(db, owners[1], ask("x"), policy)
            asked = mine + mine[:5] + [theirs, "task_" + "0" * 24]
            answers = await asyncio.gather(
                *(service.get_task(db, owners[0], task_id) for task_id in asked),
                return_exceptions=True,
            )
            assert max(sizes) > 1, sizes  # they did share reads
            for task_id, answer in zip(asked, answers, strict=True):
                if task_id in mine:
                    assert not isinstance(answer, BaseException), answer
                    assert answer["id"] == task_id and answer["status"] == "pending"
                    # Its place in the queue, as a lone poll reads it.
                    alone = await service.get_task(db, owners[0], task_id)
                    assert answer["queue_ahead"] == alone["queue_ahead"] is not None
                else:  # someone else's task reads as no task at all
                    assert isinstance(answer, NotFound), answer
        finally:
            await db.dispose()

    asyncio.run(scenario())
