"""PostgreSQL out of reach under steady submits and polls, then back.

The server reaches a real PostgreSQL through a TCP relay that the test cuts:
every open connection is reset (transactions in flight included) and new ones
are closed at once, as during a failover. The outage is kept to a few seconds
to keep the suite quick; nothing in the code depends on its length beyond the
lease (30 s here), which it must stay under for a task to run once.

While it lasts, every answer is 200 or 503 `SERVICE_UNAVAILABLE` with the
envelope, within the client's timeout; the worker holds its result instead of
failing. Within 10 s of the return, submits succeed again without a restart.
At the end: every submit answered 200 exists, ran once, completed and was
charged once; nothing answered 503 left a task or a charge; the ledger equals
the balance.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import exc as sa
from sqlalchemy import select
from sqlalchemy.engine import make_url

from imagine.db.database import Database
from imagine.db.models import LedgerEntry, Task
from imagine.db.unavailable import database_unavailable

from conftest import RunningServer, make_settings, start_server
from databases import PostgresDatabases
from helpers import assert_error, balance_and_ledger, run_db, wait_for_task
from loopback_doubles import TcpCut

pytestmark = pytest.mark.alone  # recovery is held to seconds

COST = 40
OUTAGE_SECONDS = 3.0
RECOVERY_BOUND = 10.0


@pytest.fixture
def relay(postgres: PostgresDatabases) -> Iterator[tuple[TcpCut, str]]:
    """A fresh database reached through a relay the test can cut."""
    url = postgres.create()
    cut = TcpCut(make_url(url).port or 5432)
    relayed = make_url(url).set(port=cut.port).render_as_string(hide_password=False)
    yield cut, relayed
    cut.close()
    postgres.drop(url)


class Load:
    """Submits (each with its own Idempotency-Key) and polls at a steady pace
    from a few threads, recording every answer."""

    def __init__(self, server: RunningServer, key: str, threads: int = 3) -> None:
        self.server = server
        self.key = key
        self.accepted: dict[str, str] = {}  # idempotency key -> task id
        self.refused: list[str] = []  # idempotency keys answered 503
        self.problems: list[str] = []
        self._answers: list[tuple[float, float]] = []  # (sent, answered 200)
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def accepted_since(self, moment: float) -> float | None:
        """When the first submit sent after `moment` was answered 200."""
        with self._lock:
            return min((t for sent, t in self._answers if sent >= moment), default=None)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.server.url, headers=headers, timeout=10) as client:
            while not self._stop.is_set():
                name = f"outage-{next(self._names)}"
                sent = time.monotonic()
                try:
                    answer = client.post(
                        "/v1/generate",
                        json={"prompt": "outage", "duration": 1},
                        headers={"Idempotency-Key": name},
                    )
                    self._record(name, sent, answer)
                    self._poll(client)
                except Exception as exc:  # a hang past the timeout, a 500, anything
                    with self._lock:
                        self.problems.append(f"{name}: {exc!r}")
                time.sleep(0.25)

    def _record(self, name: str, sent: float, answer: httpx.Response) -> None:
        if answer.status_code == 200:
            with self._lock:
                self.accepted[name] = answer.json()["data"]["task_id"]
                self._answers.append((sent, time.monotonic()))
        else:
            assert_error(answer, 503, "SERVICE_UNAVAILABLE")
            with self._lock:
                self.refused.append(name)

    def _poll(self, client: httpx.Client) -> None:
        with self._lock:
            task_id = next(reversed(self.accepted.values()), None)
        if task_id is None:
            return
        answer = client.get("/v1/status", params={"task_id": task_id})
        if answer.status_code != 200:
            assert_error(answer, 503, "SERVICE_UNAVAILABLE")


async def _tasks_and_charges(
    db: Database, account_id: str
) -> dict[str, tuple[str, int, list[str]]]:
    async with db.read() as session:
        tasks = (
            await session.execute(
                select(Task.id, Task.status, Task.attempts).where(Task.account_id == account_id)
            )
        ).all()
        entries = (
            await session.execute(
                select(LedgerEntry.task_id, LedgerEntry.kind).where(
                    LedgerEntry.account_id == account_id
                )
            )
        ).all()
    kinds: dict[str, list[str]] = {}
    for task_id, kind in entries:
        kinds.setdefault(str(task_id), []).append(kind)
    return {t.id: (t.status, t.attempts, sorted(kinds.get(t.id, []))) for t in tasks}


def test_a_database_outage_answers_503_loses_nothing_and_recovers(
    relay: tuple[TcpCut, str], tmp_path: Path
) -> None:
    cut, url = relay
    server = start_server(
        make_settings(
            tmp_path / "data",
            database_url=url,
            workers=2,
            lease_seconds=30.0,
            rate_limit_free=100_000,
        )
    )
    try:
        issued = server.new_key(credits=COST * 10_000)
        load = Load(server, issued.key)
        with load:
            time.sleep(1.5)
            cut.cut()
            time.sleep(OUTAGE_SECONDS)
            cut.restore()
            back = time.monotonic()
            while load.accepted_since(back) is None and time.monotonic() < back + RECOVERY_BOUND:
                time.sleep(0.1)
            time.sleep(1.0)
        assert not load.problems, load.problems[:5]
        recovered = load.accepted_since(back)
        assert recovered is not None and recovered - back < RECOVERY_BOUND
        assert load.refused, "the outage was never seen"

        with server.client(issued.key) as client:
            for task_id in load.accepted.values():
                assert wait_for_task(client, task_id)["status"] == "completed"
        found = run_db(server.settings, lambda db: _tasks_and_charges(db, issued.account_id))
        assert set(found) == set(load.accepted.values())  # nothing from a 503
        for task_id, (status, attempts, kinds) in found.items():
            assert (status, attempts, kinds) == ("completed", 1, ["debit"]), task_id
        balance, total = run_db(
            server.settings, lambda db: balance_and_ledger(db, issued.account_id)
        )
        assert balance == total == COST * (10_000 - len(found))
    finally:
        server.stop()


def test_only_the_database_s_absence_is_a_503() -> None:
    """A full disk or a bug stays a 500 (logged with its traceback)."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert database_unavailable(refused)
    assert database_unavailable(sa.OperationalError("SELECT 1", {}, refused))
    assert database_unavailable(sa.TimeoutError("QueuePool limit reached"))
    assert not database_unavailable(OSError(errno.ENOSPC, "No space left on device"))
    assert not database_unavailable(sa.IntegrityError("INSERT", {}, ValueError("duplicate")))
    assert not database_unavailable(KeyError("bug"))


class AccountLock:
    """Holds an account's row lock from a connection of the test's own (not
    through the relay), so that a submit waits inside PostgreSQL until the
    test lets it go."""

    def __init__(self, url: str, account_id: str) -> None:
        self._url = url
        self._account_id = account_id
        self._taken = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._hold()))

    def __enter__(self) -> AccountLock:
        self._thread.start()
        assert self._taken.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._thread.join()

    def release(self) -> None:
        self._release.set()

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", self._account_id
                )
                self._taken.set()
                await asyncio.to_thread(self._release.wait)
        finally:
            await conn.close()


def _waiting_on_a_lock(url: str) -> bool:
    async def ask() -> bool:
        conn = await asyncpg.connect(url)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(ask())


def test_a_submit_whose_answer_is_lost_after_its_commit_is_answered_200(
    relay: tuple[TcpCut, str], tmp_path: Path
) -> None:
    """The narrow window of any database client: the statement commits, the
    connection breaks before its answer arrives. The submit must not be
    answered 503 about a task that exists and was charged."""
    cut, url = relay
    direct = make_url(url).set(drivername="postgresql", port=cut.upstream_port)
    direct_url = direct.render_as_string(hide_password=False)
    server = start_server(make_settings(tmp_path / "data", database_url=url, workers=0))
    try:
        issued = server.new_key(credits=COST * 10)
        answers: list[httpx.Response] = []
        with server.client(issued.key) as client:
            client.get("/v1/status", params={"task_id": "task_" + "0" * 24})  # pools open
            with AccountLock(direct_url, issued.account_id) as lock:
                submit = threading.Thread(
                    target=lambda: answers.append(
                        client.post("/v1/generate", json={"prompt": "lost answer"}, timeout=20)
                    )
                )
                submit.start()
                deadline = time.monotonic() + 10
                while not _waiting_on_a_lock(direct_url):  # the statement is in PostgreSQL
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                cut.cut()  # the connection breaks while the statement waits
                time.sleep(0.5)
                cut.restore()
                lock.release()  # the statement goes on and commits; its answer is lost
                submit.join(20)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        task_id = answer.json()["data"]["task_id"]
        found = run_db(server.settings, lambda db: _tasks_and_charges(db, issued.account_id))
        assert found == {task_id: ("pending", 0, ["debit"])}
        balance, total = run_db(
            server.settings, lambda db: balance_and_ledger(db, issued.account_id)
        )
        assert balance == total == COST * 9
    finally:
        server.stop()
