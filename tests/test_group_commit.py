"""The SQLite group committer: many units, few commits, each unit all or nothing,
and the event loop never waits on the disk or on another writer's lock."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import text

from imagine.db.group_commit import GroupCommitter
from imagine.db.prepared import Tx

T = TypeVar("T")

INSERT = text("INSERT INTO items (name) VALUES (:name)")
BREAK_THE_BATCH = text("ROLLBACK")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "units.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
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


class HeldCommits(sqlite3.Connection):
    """A connection whose COMMIT waits until the test lets it through."""

    release = threading.Event()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            assert self.release.wait(10), "the test never released the commit"
        return super().execute(sql, *args)


def run(
    path: Path,
    scenario: Callable[[GroupCommitter], Awaitable[T]],
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> T:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=factory)

    async def main() -> T:
        committer = GroupCommitter(connect)
        try:
            return await scenario(committer)
        finally:
            await committer.close()

    return asyncio.run(main())


def test_concurrent_units_share_commits_and_each_is_durable_when_answered(db_path: Path) -> None:
    async def scenario(db: GroupCommitter) -> list[str]:
        async def one(n: int) -> str:
            await asyncio.sleep(n % 7 / 1000)  # arrivals spread over a few milliseconds
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
        outcomes: list[object] = list(await asyncio.gather(*units, return_exceptions=True))
        assert db.commits == 1  # all arrived together: one transaction
        return outcomes

    outcomes = run(db_path, scenario)
    for n, outcome in enumerate(outcomes[:60]):
        if n % 3 == 0:
            assert isinstance(outcome, ValueError) and str(n) in str(outcome)
        else:
            assert outcome == f"unit-{n}"
    assert type(outcomes[60]).__name__ == "IntegrityError"
    assert names_in(db_path) == {f"unit-{n}" for n in range(60) if n % 3}


def test_a_broken_batch_fails_every_unit_and_commits_nothing(db_path: Path) -> None:
    def breaks_the_transaction(tx: Tx) -> str:
        tx.run(BREAK_THE_BATCH, {})
        return "unreachable: the batch cannot commit"

    async def scenario(db: GroupCommitter) -> list[object]:
        units = [db.run(insert, f"unit-{n}") for n in range(10)]
        units.append(db.run(breaks_the_transaction))
        outcomes: list[object] = list(await asyncio.gather(*units, return_exceptions=True))
        # The committer recovers: the next unit commits normally.
        outcomes.append(await db.run(insert, "after"))
        return outcomes

    outcomes = run(db_path, scenario)
    assert all(isinstance(outcome, Exception) for outcome in outcomes[:11]), outcomes
    assert outcomes[11] == "after"
    assert names_in(db_path) == {"after"}


def test_units_arriving_during_a_commit_form_the_next_batch_and_the_abandoned_are_dropped(
    db_path: Path,
) -> None:
    HeldCommits.release.clear()

    async def scenario(db: GroupCommitter) -> None:
        first = asyncio.ensure_future(db.run(insert, "first"))
        await asyncio.sleep(0.1)  # its COMMIT is now held in the commit thread
        assert not first.done()
        later = [asyncio.ensure_future(db.run(insert, f"later-{n}")) for n in range(5)]
        abandoned = asyncio.ensure_future(db.run(insert, "abandoned"))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.sleep(0.05)
        assert db.commits == 0
        HeldCommits.release.set()
        await first
        await asyncio.gather(*later)
        assert db.commits == 2

    run(db_path, scenario, factory=HeldCommits)
    assert names_in(db_path) == {"first", *(f"later-{n}" for n in range(5))}


def test_another_writer_holding_the_lock_does_not_stall_the_event_loop(db_path: Path) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. the CLI granting credits

    async def scenario(db: GroupCommitter) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.ensure_future(ticker())
        unit = asyncio.ensure_future(db.run(insert, "waited"))
        await asyncio.sleep(0.3)
        assert not unit.done()  # waiting for the lock, off the loop
        ticks_while_waiting = ticks
        other.execute("COMMIT")
        assert await unit == "waited"
        ticking.cancel()
        return ticks_while_waiting

    assert run(db_path, scenario) >= 10  # the loop kept running meanwhile
    other.close()
    assert names_in(db_path) == {"waited"}
