"""The scaled-out layout for real: 2 API processes and 2 worker processes sharing
PostgreSQL, Redis and S3 on loopback, with a worker killed mid-task."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from imagine.db.database import Database
from imagine.db.models import LedgerEntry, Task
from imagine.settings import load_settings

from helpers import balance_and_ledger, run_db
from objectstore import S3Server
from processes import ImagineProcess, ServeProcess, WorkerProcess, cli, scaled_out_env

TASKS = 200
ACCOUNTS = 4


async def submit_all(urls: list[str], keys: list[str]) -> list[str]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def submit(i: int) -> str:
            answer = await client.post(
                f"{urls[i % len(urls)]}/v1/generate",
                headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
                json={"prompt": f"cluster task {i}", "duration": 1, "ratio": "1:1"},
            )
            assert answer.status_code == 200, answer.text
            return str(answer.json()["data"]["task_id"])

        return await asyncio.gather(*(submit(i) for i in range(TASKS)))


async def queue_state(db: Database, worker_pid: int) -> dict[str, int]:
    async with db.read() as session:
        rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
        state = {status: count for status, count in rows}
        state["held_by_victim"] = int(
            await session.scalar(
                select(func.count()).where(
                    Task.status == "processing", Task.lease_owner.contains(f"-{worker_pid}-")
                )
            )
            or 0
        )
    return state


def test_two_apis_two_workers_one_killed_every_task_once(
    tmp_path: Path, postgres: Any, s3_server: S3Server, processes: list[ImagineProcess]
) -> None:
    database_url = postgres.create(migrated=False)
    bucket = s3_server.new_bucket()
    env = {**scaled_out_env(database_url, s3_server, bucket), "IMAGINE_POLL_INTERVAL": "0.05"}
    try:
        refused = cli("keys", "list", "--data-dir", str(tmp_path / "cli"), env=env)
        assert refused.returncode == 2 and "imagine db upgrade" in refused.stderr
        upgraded = cli("db", "upgrade", "--data-dir", str(tmp_path / "cli"), env=env)
        assert upgraded.returncode == 0, upgraded.stderr

        accounts = [
            json.loads(
                cli(
                    "keys",
                    "create",
                    "--plan",
                    "pro",
                    "--credits",
                    str(40 * TASKS),
                    "--json",
                    "--data-dir",
                    str(tmp_path / "cli"),
                    env=env,
                ).stdout
            )
            for _ in range(ACCOUNTS)
        ]
        apis = [ServeProcess(tmp_path / f"api{i}", "--no-workers", env=env) for i in range(2)]
        processes.extend(apis)
        workers = [
            WorkerProcess(tmp_path / f"worker{i}", "--concurrency", "2", env=env) for i in range(2)
        ]
        processes.extend(workers)

        task_ids = asyncio.run(submit_all([api.url for api in apis], [a["key"] for a in accounts]))
        assert len(set(task_ids)) == TASKS

        settings = load_settings(database_url=database_url)
        victim = workers[0]
        deadline = time.monotonic() + 60
        while run_db(settings, lambda db: queue_state(db, victim.pid))["held_by_victim"] == 0:
            assert time.monotonic() < deadline, "the victim worker never held a task"
            time.sleep(0.01)
        victim.kill()

        deadline = time.monotonic() + 240
        while True:
            state = run_db(settings, lambda db: queue_state(db, victim.pid))
            if state.get("completed", 0) == TASKS:
                break
            assert not state.get("failed"), state
            assert time.monotonic() < deadline, state
            time.sleep(0.5)

        async def final_rows(db: Database) -> list[Any]:
            async with db.read() as session:
                return list(
                    (
                        await session.execute(
                            select(
                                Task.id, Task.status, Task.outputs, Task.attempts, Task.lease_owner
                            )
                        )
                    ).all()
                )

        rows = run_db(settings, final_rows)
        assert {row.id for row in rows} == set(task_ids)
        assert all(row.status == "completed" and row.lease_owner is None for row in rows)
        assert all(len(row.outputs) == 1 for row in rows)
        assert max(row.attempts for row in rows) == 2  # the killed worker's task ran again

        stored = set(s3_server.keys(bucket))
        outputs = {row.outputs[0] for row in rows}
        assert outputs <= stored

        async def balances(db: Database) -> list[tuple[int, int]]:
            return [await balance_and_ledger(db, a["account_id"]) for a in accounts]

        expected = 40 * TASKS - 40 * (TASKS // ACCOUNTS)
        assert run_db(settings, balances) == [(expected, expected)] * ACCOUNTS

        async def ledger_kinds(db: Database) -> dict[str, int]:
            async with db.read() as session:
                rows = await session.execute(
                    select(LedgerEntry.kind, func.count()).group_by(LedgerEntry.kind)
                )
                return {kind: count for kind, count in rows}

        assert run_db(settings, ledger_kinds) == {"grant": ACCOUNTS, "debit": TASKS}

        async def download_all() -> None:
            headers = {"Authorization": f"Bearer {accounts[0]['key']}"}
            async with httpx.AsyncClient(base_url=apis[1].url, headers=headers) as client:
                mine = task_ids[0::ACCOUNTS]
                answers = await asyncio.gather(
                    *(client.get("/v1/status", params={"task_id": t}) for t in mine)
                )
                urls = [answer.json()["data"]["response"][0] for answer in answers]
                videos = await asyncio.gather(*(client.get(url) for url in urls))
            assert all(v.status_code == 200 and v.content[4:8] == b"ftyp" for v in videos)

        asyncio.run(download_all())
    finally:
        for proc in processes:
            proc.terminate()
        postgres.drop(database_url)
