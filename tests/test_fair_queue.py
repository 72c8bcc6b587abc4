"""Fair claiming: live before test, accounts interleaved by plan, and a queue
position that is exactly the number of tasks claimed before it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ColumnClause, column, insert, select, table

from imagine.accounts import service as accounts
from imagine.db import schema
from imagine.db.database import Database
from imagine.db.models import Account, Base, Task
from imagine.failures import FailureReason
from imagine.queue import repository as queue
from imagine.settings import load_settings
from imagine.tasks.schemas import GenerationRequest

from conftest import RunningServer
from databases import PostgresDatabases
from helpers import run_db, wait_for_task

BODY = {"prompt": "a queue of paper boats", "duration": 1, "resolution": "480p"}


def new_test_key(server: RunningServer) -> accounts.IssuedKey:
    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(session, plan="free", credits=0, is_test=True)

    return run_db(server.settings, create)


def submit(server: RunningServer, key: str, count: int) -> list[str]:
    with server.client(key) as client:
        answers = [client.post("/v1/generate", json=BODY) for _ in range(count)]
    assert all(answer.status_code == 200 for answer in answers), answers[-1].text
    return [answer.json()["data"]["task_id"] for answer in answers]


def positions(server: RunningServer, owned: dict[str, list[str]]) -> dict[str, int]:
    """Each task's `queue_position` as its owner (key → task ids) reads it."""
    found = {}
    for key, task_ids in owned.items():
        with server.client(key) as client:
            for task_id in task_ids:
                data = client.get("/v1/status", params={"task_id": task_id}).json()["data"]
                assert data["status"] == "pending"
                found[task_id] = data["queue_position"]
    return found


def claim_all(server: RunningServer) -> list[str]:
    """Claim every task one at a time, as workers would; the ids in claim order."""

    async def drain(db: Database) -> list[str]:
        taken = []
        while (claimed := await queue.claim(db, "probe", 30)) is not None:
            taken.append(claimed.task_id)
        return taken

    return run_db(server.settings, drain)


def test_a_paying_task_goes_before_earlier_test_tasks(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    tester, payer = new_test_key(server), server.new_key("pro")
    test_tasks = submit(server, tester.key, 30)
    (paid,) = submit(server, payer.key, 1)

    assert positions(server, {payer.key: [paid]}) == {paid: 1}
    assert positions(server, {tester.key: test_tasks[:1]}) == {test_tasks[0]: 2}
    assert claim_all(server) == [paid, *test_tasks]


def test_a_later_account_is_served_alongside_an_earlier_backlog(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    a, b = server.new_key("free"), server.new_key("free")
    a_tasks = submit(server, a.key, 20)
    b_tasks = submit(server, b.key, 5)

    interleaved = [task for pair in zip(a_tasks[:5], b_tasks, strict=True) for task in pair]
    assert claim_all(server) == [*interleaved, *a_tasks[5:]]


def test_a_higher_plan_gets_a_larger_share(server_factory: Any) -> None:
    """One quantum of 20 s (pro) to 60 s (free): three tasks to one."""
    server: RunningServer = server_factory(workers=0, queue_quantum_free=60, queue_quantum_pro=20)
    free, pro = server.new_key("free"), server.new_key("pro")
    owner = dict.fromkeys(submit(server, free.key, 8), "F")
    owner |= dict.fromkeys(submit(server, pro.key, 8), "P")

    served = "".join(owner[task] for task in claim_all(server))
    assert served == "FPPPFPPPFPPFFFFF"


def test_queue_position_is_the_number_of_tasks_claimed_before_it(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    free, pro, tester = server.new_key("free"), server.new_key("pro"), new_test_key(server)
    owned = {
        free.key: submit(server, free.key, 6),
        tester.key: submit(server, tester.key, 4),
        pro.key: submit(server, pro.key, 4),
    }
    owned[free.key] += submit(server, free.key, 2)
    reported = positions(server, owned)

    order = claim_all(server)
    assert sorted(order) == sorted(reported)
    assert {task: order.index(task) + 1 for task in order} == reported


def test_a_lone_accounts_tasks_run_back_to_back(server_factory: Any) -> None:
    """The tenth task's place is nine quanta (9 minutes) ahead of real time, yet
    it is claimed as soon as a worker is free: a place orders, it never waits."""
    server: RunningServer = server_factory(workers=1, queue_quantum_enterprise=60)
    issued = server.new_key("enterprise")  # its rate limit leaves room for the polls
    task_ids = submit(server, issued.key, 10)
    started = time.monotonic()
    with server.client(issued.key) as client:
        finished = [wait_for_task(client, task_id, timeout=120) for task_id in task_ids]
    assert {data["status"] for data in finished} == {"completed"}
    assert time.monotonic() - started < 120

    async def starts(db: Database) -> list[str]:
        async with db.read() as session:
            rows = await session.execute(select(Task.id).order_by(Task.started_at))
        return list(rows.scalars())

    assert run_db(server.settings, starts) == task_ids


def test_a_retried_task_keeps_its_place(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    a, b = server.new_key("free"), server.new_key("free")
    (first,) = submit(server, a.key, 1)
    (second,) = submit(server, b.key, 1)

    async def fail_then_claim(db: Database) -> list[str]:
        claimed = await queue.claim(db, "probe", 30)
        assert claimed is not None and claimed.task_id == first
        status = await queue.fail(
            db, claimed, FailureReason.NETWORK, "upstream hiccup", retry_after=0
        )
        assert status == "pending"
        again = [await queue.claim(db, "probe", 30) for _ in range(2)]
        return [c.task_id for c in again if c is not None]

    assert run_db(server.settings, fail_then_claim) == [first, second]


TASK_COLUMNS_AT_0003 = (
    "id",
    "account_id",
    "status",
    "request",
    "cost",
    "consumed_credits",
    "engine",
    "outputs",
    "progress",
    "attempts",
    "max_attempts",
    "created_at",
    "updated_at",
    "available_at",
    "is_test",
)
REQUEST = GenerationRequest(
    mode="normal", prompt="p", ratio="1:1", images=(), duration=1, resolution="480p", seed=None
).to_json()


def columns(model: type[Base], *names: str) -> list[ColumnClause[Any]]:
    """Columns of a table as an older schema has them (with the model's types)."""
    return [column(name, model.__table__.c[name].type) for name in names]


@pytest.fixture(params=["sqlite", "postgres"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """An empty database: SQLite's file in the data dir (None), or PostgreSQL's."""
    if request.param == "sqlite":
        yield None
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    url = databases.create(migrated=False)
    yield url
    databases.drop(url)


def test_upgrade_places_unfinished_tasks_in_their_old_order(
    unmigrated_url: str | None, tmp_path: Path
) -> None:
    settings = load_settings(database_url=unmigrated_url, data_dir=tmp_path)
    base = datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)

    async def upgrade_with_tasks(db: Database) -> tuple[dict[str, float], list[str]]:
        await schema.upgrade(db, "0003")
        async with db.migration_connection() as conn:
            await conn.execute(
                insert(
                    table(
                        "accounts", *columns(Account, "id", "name", "plan", "balance", "created_at")
                    )
                ),
                {"id": "acct_old", "name": "", "plan": "free", "balance": 0, "created_at": base},
            )
            old_tasks = table("tasks", *columns(Task, *TASK_COLUMNS_AT_0003))
            for n, status in enumerate(["pending", "completed", "pending", "processing"]):
                moment = base - timedelta(seconds=n)
                await conn.execute(
                    insert(old_tasks),
                    {
                        "id": f"task_{n}",
                        "account_id": "acct_old",
                        "status": status,
                        "request": REQUEST,
                        "cost": 40,
                        "consumed_credits": 40,
                        "engine": "preview",
                        "outputs": [],
                        "progress": 0,
                        "attempts": 0,
                        "max_attempts": 3,
                        "created_at": moment,
                        "updated_at": moment,
                        "available_at": moment,
                        "is_test": False,
                    },
                )
        await schema.upgrade(db)
        async with db.read() as session:
            places = {
                row.id: row.fair_at for row in await session.execute(select(Task.id, Task.fair_at))
            }
        order = []
        while (claimed := await queue.claim(db, "probe", 30)) is not None:
            order.append(claimed.task_id)
        return places, order

    places, order = run_db(settings, upgrade_with_tasks)
    for n in (0, 2, 3):
        expected = (base - timedelta(seconds=n)).timestamp()
        assert abs(places[f"task_{n}"] - expected) < 0.01
    assert places["task_1"] == 0
    assert order == ["task_2", "task_0"]
