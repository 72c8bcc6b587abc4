"""Submit-to-claim latency: from a POST's answer to its task entering `processing`."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from bench import servers
from imagine.db.database import Database
from imagine.db.models import Task
from imagine.settings import load_settings

BODY = {"prompt": "claim me", "duration": 1, "ratio": "1:1"}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)]


async def _claim_times(database_url: str) -> dict[str, float]:
    db = Database(database_url)
    try:
        async with db.read() as session:
            rows = await session.execute(select(Task.id, Task.started_at))
            return {task_id: started.timestamp() for task_id, started in rows if started}
    finally:
        await db.dispose()


def submit_to_claim(env: dict[str, str], tasks: int = 40) -> list[float]:
    """Milliseconds from each POST's answer to the claim (its `started_at`), one
    task at a time so the worker is idle when each arrives."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = servers.create_key(data_dir, env)
        answered: dict[str, float] = {}
        with (
            servers.imagine(data_dir, env, workers=1) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key['key']}"}) as client,
        ):
            for _ in range(tasks):
                task_id = client.post("/v1/generate", json=BODY).json()["data"]["task_id"]
                answered[task_id] = time.time()
                while client.get("/v1/status", params={"task_id": task_id}).json()["data"][
                    "status"
                ] not in ("completed", "failed"):
                    time.sleep(0.01)
        settings = load_settings(data_dir=data_dir, database_url=env.get("IMAGINE_DATABASE_URL"))
        claimed = asyncio.run(_claim_times(settings.resolved_database_url))
    return [max(0.0, (claimed[t] - answered[t]) * 1000) for t in answered]
