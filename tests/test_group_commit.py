"""The SQLite group committer: many units, few commits, each unit all or nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text

from imagine.db.group_commit import GroupCommitter
from imagine.db.prepared import Tx

T = TypeVar("T")

INSERT = text("INSERT INTO items (name) VALUES (:name)")
COUNT = text("SELECT count(*) AS n FROM items WHERE name = :name")
BREAK_THE_BATCH = text("ROLLBACK")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "units.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
    return path


def names_in(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM items")}


def insert(tx: Tx, name: str) -> str:
    tx.run(INSERT, {"name": name})
    return name


def insert_then_fail(tx: Tx, name: str) -> str:
    tx.run(INSERT, {"name": name})
    raise ValueError(f"{name} changed its mind")


def run(path: Path, scenario: Callable[[GroupCommitter], Awaitable[T]]) -> T:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    async def main() -> T:
        committer = GroupCommitter(connect)
        try:
            return await scenario(committer)
        finally:
            committer.close()

    return asyncio.run(main())


def test_concurrent_units_share_commits_and_each_is_durable_when_answered(db_path: Path) -> None:
    async def scenario(db: GroupCommitter) -> list[str]:
        async def one(n: int) -> str:
            name = await db.run(insert, f"unit-{n}")
            # Answered only after the commit: another connection already sees it.
            with sqlite3.connect(db_path) as other:
                assert other.execute("SELECT 1 FROM items WHERE name = ?", (name,)).fetchone()
            return name

        names = await asyncio.gather(*(one(n) for n in range(300)))
        assert db.commits < 300 / 2, db.commits  # grouped
        return list(names)

    assert run(db_path, scenario) == [f"unit-{n}" for n in range(300)]
    assert len(names_in(db_path)) == 300


def test_a_failing_unit_rolls_back_alone_and_gets_its_exception(db_path: Path) -> None:
    async def scenario(db: GroupCommitter) -> list[object]:
        units = []
        for n in range(60):
            work = insert_then_fail if n % 3 == 0 else insert
            units.append(db.run(work, f"unit-{n}"))
        # A duplicate violates the unique constraint: an IntegrityError for that unit only.
        units.append(db.run(insert, "unit-1"))
        return await asyncio.gather(*units, return_exceptions=True)

    outcomes = run(db_path, scenario)
    for n, outcome in enumerate(outcomes[:60]):
        if n % 3 == 0:
            assert isinstance(outcome, ValueError) and str(n) in str(outcome)
        else:
            assert outcome == f"unit-{n}"
    assert type(outcomes[60]).__name__ == "IntegrityError"
    assert names_in(db_path) == {f"unit-{n}" for n in range(60) if n % 3}


def test_a_broken_batch_fails_every_unit_and_commits_nothing(db_path: Path) -> None:
    release = threading.Event()

    def hold(tx: Tx) -> None:
        release.wait(10)

    def breaks_the_transaction(tx: Tx) -> str:
        tx.run(BREAK_THE_BATCH, {})
        return "unreachable: the batch cannot commit"

    async def scenario(db: GroupCommitter) -> list[object]:
        first = asyncio.ensure_future(db.run(hold))
        await asyncio.sleep(0.2)  # the writer is now inside `hold`; the rest queue up
        rest = [db.run(insert, f"unit-{n}") for n in range(10)]
        rest.append(db.run(breaks_the_transaction))
        batch = asyncio.gather(*rest, return_exceptions=True)
        await asyncio.sleep(0.2)
        release.set()
        await first
        outcomes: list[object] = list(await batch)
        # The committer recovers: the next unit commits normally.
        outcomes.append(await db.run(insert, "after"))
        return outcomes

    outcomes = run(db_path, scenario)
    assert all(isinstance(outcome, Exception) for outcome in outcomes[:11]), outcomes
    assert outcomes[11] == "after"
    assert names_in(db_path) == {"after"}


def test_a_unit_whose_caller_gave_up_before_it_ran_is_not_run(db_path: Path) -> None:
    release = threading.Event()

    def hold(tx: Tx) -> None:
        release.wait(10)

    async def scenario(db: GroupCommitter) -> None:
        first = asyncio.ensure_future(db.run(hold))
        await asyncio.sleep(0.2)
        abandoned = asyncio.ensure_future(db.run(insert, "abandoned"))
        await asyncio.sleep(0.1)
        abandoned.cancel()
        await asyncio.sleep(0.1)
        release.set()
        await first
        await db.run(insert, "later")

    run(db_path, scenario)
    assert names_in(db_path) == {"later"}
