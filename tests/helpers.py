"""Small helpers the tests share: waiting for tasks, reading the ledger, making images."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from PIL import Image
from sqlalchemy import func, select

from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import Account, Base
from imagine.settings import Settings

T = TypeVar("T")

FINISHED = {"completed", "failed", "cancelled"}


def run_db(settings: Settings, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run `action(db)` against a server's database from the test thread."""

    async def runner() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await action(db)
        finally:
            await db.dispose()

    return asyncio.run(runner())


def count_rows(settings: Settings, table: type[Base]) -> int:
    async def count(db: Database) -> int:
        async with db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(table)) or 0)

    return run_db(settings, count)


def wait_for_task(client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll /v1/status until the task ends; returns its `data`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/v1/status", params={"task_id": task_id})
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        if data["status"] in FINISHED:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {data['status']} after {timeout}s")
        time.sleep(0.05)


async def balance_and_ledger(db: Database, account_id: str) -> tuple[int, int]:
    async with db.read() as session:
        balance = await session.scalar(select(Account.balance).where(Account.id == account_id))
        total = await ledger.ledger_sum(session, account_id)
    assert balance is not None
    return balance, total


def image_bytes(
    color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (64, 48)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()
