"""Small helpers the tests share: waiting for tasks, reading the ledger, making images."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import func, select

from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import Account, Base
from imagine.media.video import VideoInfo, probe_mp4
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


def assert_error(answer: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """The answer is the envelope of `error` with `status`, and gives nothing away."""
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert body["code"] == status
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in answer.text and "SELECT" not in answer.text
    return body


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


def decoded_mp4(data: bytes) -> VideoInfo:
    """What an MP4 downloaded by a client really holds (every frame decoded)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        path.write_bytes(data)
        return probe_mp4(path)


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def noise_png(size: tuple[int, int], seed: int = 0) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about w*h*3 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _memory(field: str) -> int:
    """A `Vm*` line of this process's /proc status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def peak_memory_growth() -> Iterator[list[int]]:
    """How far this process's resident memory peaked above where it stood on
    entry (the test server runs in this process): yields a list that holds the
    growth in bytes once the block ends. Linux resets the peak on request."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS
    before = _memory("VmRSS")
    growth: list[int] = []
    yield growth
    growth.append(_memory("VmHWM") - before)
