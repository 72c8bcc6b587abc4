"""Console pages with 10,000 tasks in the account: p50 and p95 of each page,
fetched one at a time by a signed-in client, beside `GET /healthz` in the
same run (the ratio is what to compare across machines).

    python -m bench.console [--postgres] [--requests 200] [--tasks 10000]

The account is seeded straight into the database (bulk inserts, not
submits): tasks in a realistic mix of statuses over the last 30 days, their
ledger rows (a debit each, a refund for failed and cancelled ones), webhook
deliveries for the tasks that had a callback, plus an admin key and a few
other accounts with tasks of their own. Then a real `imagine serve` process
(no workers) answers the pages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, text, update

from bench import servers
from bench.latency import percentile
from imagine.accounts.service import IssuedKey, create_account
from imagine.console.account_pages import LEDGER_PER_PAGE
from imagine.console.task_pages import TASKS_PER_PAGE
from imagine.db.database import Database
from imagine.db.models import Account, LedgerEntry, Task, WebhookAttempt, WebhookEvent
from imagine.ids import new_id, utcnow
from imagine.runtime import prepare_database
from imagine.settings import load_settings
from imagine.tasks.schemas import GenerationRequest

SPAN = timedelta(days=30)
CHUNK = 2_000
OTHER_ACCOUNTS = 4
OTHER_TASKS = 250
LIVE = 12
"""The newest tasks of an account are still queued or running; the rest ended."""
ENDED = (("completed", 85), ("failed", 10), ("cancelled", 5))
CALLBACK_SHARE = 0.2
PROMPTS = (
    "a lighthouse at dusk, waves breaking on the rocks",
    "a red fox running through fresh snow, slow motion",
    "time-lapse of clouds over a mountain ridge",
    "a paper boat drifting down a rain-soaked street",
    "neon city at night seen from a moving train",
)


@dataclass(frozen=True)
class Seeded:
    user: IssuedKey
    admin: IssuedKey
    task_id: str
    """A failed task with a callback: a debit, a refund and a delivery to show."""
    page_20_after: str
    """The cursor of the tasks list's 20th page (the last id of the 19th)."""
    page_20_first: str
    ledger_after: int
    """The cursor of the usage page's second ledger page."""


@dataclass
class _Rows:
    tasks: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    events: list[dict[str, Any]]
    attempts: list[dict[str, Any]]


def _request(rng: random.Random, callback: str | None) -> dict[str, Any]:
    return GenerationRequest(
        mode=rng.choice(("normal", "fun")),
        prompt=rng.choice(PROMPTS),
        ratio=rng.choice(("16:9", "9:16", "1:1")),
        images=(),
        duration=rng.choice((6, 6, 10)),
        resolution=rng.choice(("480p", "480p", "720p")),
        seed=rng.randrange(2**32) if rng.random() < 0.3 else None,
        callback_url=callback,
    ).to_json()


def _task(
    rng: random.Random, account_id: str, created: datetime, status: str, cost: int
) -> dict[str, Any]:
    """A task row as the service leaves it in `status`."""
    task_id = new_id("task")
    ran = status != "pending" and not (status == "cancelled" and rng.random() < 0.5)
    started = created + timedelta(seconds=rng.uniform(0.5, 20)) if ran else None
    finished = None
    if status in ("completed", "failed", "cancelled"):
        finished = (started or created) + timedelta(seconds=rng.uniform(20, 120))
    refunded = status in ("failed", "cancelled")
    callback = "https://hooks.example.com/imagine" if rng.random() < CALLBACK_SHARE else None
    failure = "The engine gave up on this prompt" if status == "failed" else None
    return {
        "id": task_id,
        "account_id": account_id,
        "status": status,
        "request": _request(rng, callback),
        "cost": cost,
        "consumed_credits": 0 if refunded else cost,
        "engine": "preview",
        "error_message": failure,
        "error_detail": "engine error: out of memory at step 12" if failure else None,
        "outputs": [f"{task_id}/{new_id('out')[4:20]}.mp4"] if status == "completed" else [],
        "progress": 100 if status == "completed" else (40 if status == "processing" else 0),
        "attempts": (3 if status == "failed" else 1) if ran else 0,
        "max_attempts": 3,
        "lease_owner": "worker-1" if status == "processing" else None,
        "lease_expires_at": utcnow() + timedelta(hours=1) if status == "processing" else None,
        "created_at": created,
        "updated_at": finished or started or created,
        "available_at": created,
        "fair_at": created.timestamp(),
        "started_at": started,
        "finished_at": finished,
        "cancel_requested_at": finished if status == "cancelled" else None,
        "callback_url": callback,
    }


def _account_rows(rng: random.Random, account_id: str, count: int, cost: int) -> _Rows:
    """`count` tasks spread over the last 30 days, newest ones still live, with
    their ledger (an opening grant, then debits and refunds in time order) and
    their webhook deliveries."""
    now = utcnow()
    start = now - SPAN
    moments = sorted(start + SPAN * rng.random() for _ in range(count))
    statuses = [name for name, weight in ENDED for _ in range(weight)]
    tasks = []
    for i, created in enumerate(moments):
        left = count - i
        status = (
            ("processing" if left <= LIVE // 3 else "pending")
            if left <= LIVE
            else rng.choice(statuses)
        )
        tasks.append(_task(rng, account_id, created, status, cost))
    grant = count * cost * 2
    moves: list[tuple[datetime, str, int, str | None, str]] = [
        (start - timedelta(days=1), "grant", grant, None, "initial credits")
    ]
    events: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    for task in tasks:
        moves.append((task["created_at"], "debit", -cost, task["id"], ""))
        if task["status"] in ("failed", "cancelled"):
            moves.append((task["finished_at"], "refund", cost, task["id"], ""))
        if task["callback_url"] and task["finished_at"] is not None:
            _deliveries(rng, task, events, attempts)
    ledger = []
    balance = 0
    for moment, kind, amount, task_id, note in sorted(moves, key=lambda move: move[0]):
        balance += amount
        ledger.append(
            {
                "account_id": account_id,
                "kind": kind,
                "amount": amount,
                "balance_after": balance,
                "task_id": task_id,
                "note": note,
                "created_at": moment,
            }
        )
    return _Rows(tasks, ledger, events, attempts)


def _deliveries(
    rng: random.Random,
    task: dict[str, Any],
    events: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
) -> None:
    """The task's end as a webhook event: mostly delivered first time, some after
    retries, a few given up."""
    event_id = new_id("msg")
    ended: datetime = task["finished_at"]
    tries = rng.choices((1, 2, 3), weights=(85, 10, 5))[0]
    delivered = rng.random() < 0.95
    moment = ended
    for attempt in range(tries):
        last = attempt == tries - 1
        ok = last and delivered
        attempts.append(
            {
                "event_id": event_id,
                "attempted_at": moment,
                "status_code": 200 if ok else rng.choice((500, 502, None)),
                "error": None if ok else "receiver answered with an error",
                "duration_ms": rng.randrange(30, 400),
            }
        )
        if not last:
            moment += timedelta(seconds=30 * 4**attempt)
    events.append(
        {
            "id": event_id,
            "task_id": task["id"],
            "account_id": task["account_id"],
            "event_type": f"task.{task['status']}",
            "status": "delivered" if delivered else "failed",
            "attempts": tries,
            "next_attempt_at": moment,
            "created_at": ended,
            "delivered_at": moment if delivered else None,
        }
    )


async def _insert(db: Database, table: type[Any], rows: list[dict[str, Any]]) -> None:
    for offset in range(0, len(rows), CHUNK):
        async with db.write() as session:
            await session.execute(insert(table), rows[offset : offset + CHUNK])


async def _store(db: Database, rows: _Rows) -> None:
    for table, batch in (
        (Task, rows.tasks),
        (LedgerEntry, rows.ledger),
        (WebhookEvent, rows.events),
        (WebhookAttempt, rows.attempts),
    ):
        await _insert(db, table, batch)
    if rows.ledger:
        last = rows.ledger[-1]
        async with db.write() as session:
            await session.execute(
                update(Account)
                .where(Account.id == last["account_id"])
                .values(balance=last["balance_after"], created_at=rows.ledger[0]["created_at"])
            )


async def _open(db: Database, **kwargs: Any) -> IssuedKey:
    async with db.write() as session:
        return await create_account(session, credits=0, **kwargs)


async def seed(database_url: str, tasks: int) -> Seeded:
    """The account under test, an admin and a few neighbours, straight into the database."""
    settings = load_settings(database_url=database_url, auto_migrate=True)
    cost = settings.cost_for("preview")
    rng = random.Random(20261201)
    db = Database(database_url)
    try:
        await prepare_database(db, settings)
        user = await _open(db, plan="pro", name="Bench Studio")
        admin = await _open(db, plan="enterprise", name="Operator", is_admin=True)
        rows = _account_rows(rng, user.account_id, tasks, cost)
        await _store(db, rows)
        for n in range(OTHER_ACCOUNTS):
            other = await _open(db, plan="free", name=f"Neighbour {n + 1}")
            await _store(db, _account_rows(rng, other.account_id, OTHER_TASKS, cost))
        if not db.is_sqlite:
            # What autovacuum does within a minute of a bulk load, done now so
            # the plans don't change halfway through the measure.
            async with db.write() as session:
                await session.execute(text("ANALYZE"))
        async with db.read() as session:
            ledger_after = await session.scalar(
                select(LedgerEntry.id)
                .where(LedgerEntry.account_id == user.account_id)
                .order_by(LedgerEntry.id.desc())
                .offset(LEDGER_PER_PAGE - 1)
                .limit(1)
            )
    finally:
        await db.dispose()
    newest = sorted(rows.tasks, key=lambda task: (task["created_at"], task["id"]), reverse=True)
    shown = next(
        task["id"] for task in newest if task["status"] == "failed" and task["callback_url"]
    )
    assert ledger_after is not None
    return Seeded(
        user=user,
        admin=admin,
        task_id=shown,
        page_20_after=newest[19 * TASKS_PER_PAGE - 1]["id"],
        page_20_first=newest[19 * TASKS_PER_PAGE]["id"],
        ledger_after=ledger_after,
    )


@contextmanager
def _signed_in(url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/signin", data={"api_key": key, "next": "/"})
        if answer.status_code != 303 or "imagine_session" not in client.cookies:
            raise RuntimeError(f"sign-in failed: {answer.status_code}")
        yield client


def _pages(seeded: Seeded) -> list[tuple[str, str, bool, str]]:
    """(name, path, as the admin, a string the page must contain)."""
    user = seeded.user.account_id
    return [
        ("overview", "/", False, "Balance"),
        ("playground", "/playground", False, "<form"),
        ("tasks, first page", "/tasks", False, "/tasks?after="),
        ("tasks, page 20 (cursor)", f"/tasks?after={seeded.page_20_after}", False,
         seeded.page_20_first),
        ("tasks, status=failed", "/tasks?status=failed", False, "failed"),
        ("task detail", f"/tasks/{seeded.task_id}", False, "refund"),
        ("keys", "/keys", False, seeded.user.display),
        ("usage", "/usage", False, "<svg"),
        ("usage, ledger page 2", f"/usage?after={seeded.ledger_after}", False, "debit"),
        ("webhooks", "/webhooks", False, "task.completed"),
        ("admin: accounts", "/admin", True, user),
        ("admin: account", f"/admin/accounts/{user}", True, user),
        ("admin: queue", "/admin/queue", True, "engine error"),
    ]  # fmt: skip


def _timed(client: httpx.Client, path: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    answer = client.get(path)
    return (time.perf_counter() - started) * 1000, answer


def measure(url: str, seeded: Seeded, requests: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per request for each page, the pages taken in turn (so noise
    falls on all of them alike), each answer checked."""
    pages = _pages(seeded)
    samples: dict[str, list[float]] = {"GET /healthz": []}
    samples.update({name: [] for name, *_ in pages})
    with _signed_in(url, seeded.user.key) as user, _signed_in(url, seeded.admin.key) as admin:
        for round_ in range(warmup + requests):
            elapsed, answer = _timed(user, "/healthz")
            if round_ >= warmup:
                samples["GET /healthz"].append(elapsed)
            for name, path, as_admin, expected in pages:
                elapsed, answer = _timed(admin if as_admin else user, path)
                if answer.status_code != 200 or expected not in answer.text:
                    raise RuntimeError(f"{path}: {answer.status_code}, {expected!r} not on it")
                if round_ >= warmup:
                    samples[name].append(elapsed)
    return samples


def run(*, postgres: bool, tasks: int = 10_000, requests: int = 200, warmup: int = 20) -> str:
    """The whole measure, as a Markdown table."""
    env, database = servers.database_env(postgres)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            database_url = load_settings(
                data_dir=data_dir, database_url=env.get("IMAGINE_DATABASE_URL")
            ).resolved_database_url
            seeded = asyncio.run(seed(database_url, tasks))
            with servers.imagine(data_dir, env, workers=0) as url:
                secret = httpx.post(
                    f"{url}/v1/webhooks/secret",
                    headers={"Authorization": f"Bearer {seeded.user.key}"},
                    json={},
                )
                secret.raise_for_status()
                samples = measure(url, seeded, requests, warmup)
    finally:
        if database is not None:
            database.drop()
    base = statistics.median(samples["GET /healthz"])
    lines = [
        f"Console pages, {tasks:,} tasks in the account · "
        f"{'PostgreSQL' if postgres else 'SQLite'} · {requests} requests per page, sequential"
        f" · {os.cpu_count()} CPUs · {utcnow():%Y-%m-%d}",
        "",
        "| page | p50 ms | p95 ms | p50 / healthz p50 |",
        "|---|---|---|---|",
    ]
    for name, values in samples.items():
        p50 = statistics.median(values)
        lines.append(f"| {name} | {p50:.1f} | {percentile(values, 95):.1f} | {p50 / base:.1f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the account")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per page first")
    args = parser.parse_args()
    print(run(postgres=args.postgres, tasks=args.tasks, requests=args.requests, warmup=args.warmup))


if __name__ == "__main__":
    main()
