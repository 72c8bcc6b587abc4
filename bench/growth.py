"""Does a big tasks table slow the hot paths? Status and claim latency with few
versus many finished tasks in the database (the ratio should stay near 1)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from bench import latency, servers
from bench.load import wrk
from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Task
from imagine.ids import new_id, utcnow
from imagine.queue import repository as queue
from imagine.runtime import prepare_database
from imagine.settings import load_settings
from imagine.tasks import service
from imagine.tasks.schemas import GenerationRequest

REQUEST = GenerationRequest(
    mode="normal",
    prompt="filler",
    ratio="1:1",
    images=(),
    duration=1,
    resolution="480p",
    seed=None,
)
CHUNK = 20_000


async def _fill(db: Database, account_id: str, rows: int) -> None:
    """`rows` completed tasks spread over the last month, inserted in bulk."""
    start = utcnow() - timedelta(days=30)
    step = timedelta(days=30) / max(rows, 1)
    for offset in range(0, rows, CHUNK):
        batch = []
        for i in range(offset, min(rows, offset + CHUNK)):
            moment = start + step * i
            batch.append(
                {
                    "id": new_id("task"),
                    "account_id": account_id,
                    "status": "completed",
                    "request": REQUEST.to_json(),
                    "cost": 40,
                    "consumed_credits": 40,
                    "engine": "preview",
                    "outputs": [],
                    "progress": 100,
                    "attempts": 1,
                    "max_attempts": 3,
                    "created_at": moment,
                    "updated_at": moment,
                    "available_at": moment,
                    "started_at": moment,
                    "finished_at": moment,
                }
            )
        async with db.write() as session:
            await session.execute(insert(Task), batch)


async def _claims(db: Database, account_id: str, count: int) -> list[float]:
    principal = Principal(account_id, "enterprise", "key_bench")
    policy = service.SubmitPolicy(0, "preview", 3, timedelta(days=1), queue_quantum=10.0)
    samples = []
    for _ in range(count):
        await service.submit(db, principal, REQUEST, policy)
        started = time.perf_counter()
        claimed = await queue.claim(db, "bench", 30)
        samples.append((time.perf_counter() - started) * 1000)
        assert claimed is not None
        await queue.complete(db, claimed, [])
    return samples


def _measure(args: argparse.Namespace, rows: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = servers.create_key(data_dir, {})
        settings = load_settings(data_dir=data_dir)

        async def build() -> list[float]:
            db = Database(settings.resolved_database_url)
            try:
                await prepare_database(db, settings)
                await _fill(db, key["account_id"], rows)
                return await _claims(db, key["account_id"], 50)
            finally:
                await db.dispose()

        claims = asyncio.run(build())
        auth = {"Authorization": f"Bearer {key['key']}"}
        with servers.imagine(data_dir, {}, workers=0) as url:
            import httpx

            task_id = httpx.post(
                f"{url}/v1/generate", json={"prompt": "probe"}, headers=auth
            ).json()["data"]["task_id"]
            result = wrk(
                f"{url}/v1/status?task_id={task_id}",
                seconds=max(3, args.seconds // 2),
                connections=args.connections,
                headers=auth,
            )
    return result.p50_ms, result.p99_ms, statistics.median(claims)


def compare(args: argparse.Namespace, small: int, big: int) -> list[tuple[str, str]]:
    if args.postgres:
        return [("growth", "measured on SQLite only (run without --postgres)")]
    s50, s99, sclaim = _measure(args, small)
    b50, b99, bclaim = _measure(args, big)
    return [
        (
            f"GET /v1/status, {small:,} vs {big:,} tasks",
            f"p50 {s50:.2f} → {b50:.2f} ms ({b50 / s50:.2f}×), p99 {s99:.2f} → {b99:.2f} ms",
        ),
        (
            f"claim, {small:,} vs {big:,} tasks",
            f"p50 {sclaim:.2f} → {bclaim:.2f} ms ({bclaim / sclaim:.2f}×)",
        ),
    ]


__all__ = ["compare", "latency"]
