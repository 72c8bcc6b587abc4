"""Which worker processes are alive: each one heart-beats a row of its own.

A task's lease tells only about the workers busy with it. To know that
workers are there at all (and alert when tasks wait with none to take
them), every process that runs workers (`runtime.WorkerPool`) writes its
row at start, refreshes it every heartbeat interval and deletes it when it
stops. A process that dies leaves its row behind; a row not refreshed
within a lease counts as dead, and rows dead for a day are removed by the
next heartbeat of any process.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select, update

from imagine.db.database import Database
from imagine.db.models import WorkerProcess
from imagine.ids import utcnow
from imagine.periodic import Periodic

log = logging.getLogger("imagine.worker")

FORGET_AFTER = timedelta(days=1)


async def beat(db: Database, process_id: str, engines: list[str], slots: int) -> None:
    """Write this process's row (insert on the first beat, refresh after)."""
    now = utcnow()
    async with db.write() as session:
        result = await session.execute(
            update(WorkerProcess)
            .where(WorkerProcess.id == process_id)
            .values(seen_at=now, engines=engines, slots=slots)
        )
        if not getattr(result, "rowcount", 0):
            session.add(
                WorkerProcess(
                    id=process_id, engines=engines, slots=slots, started_at=now, seen_at=now
                )
            )
        await session.execute(
            delete(WorkerProcess).where(WorkerProcess.seen_at < now - FORGET_AFTER)
        )


async def leave(db: Database, process_id: str) -> None:
    async with db.write() as session:
        await session.execute(delete(WorkerProcess).where(WorkerProcess.id == process_id))


async def alive_by_engine(db: Database, within: float) -> dict[str, int]:
    """Worker slots per engine in processes seen in the last `within` seconds."""
    since = utcnow() - timedelta(seconds=within)
    async with db.read() as session:
        rows = await session.execute(
            select(WorkerProcess.engines, WorkerProcess.slots).where(WorkerProcess.seen_at >= since)
        )
        alive: dict[str, int] = {}
        for engines, slots in rows:
            for engine in engines:
                alive[engine] = alive.get(engine, 0) + int(slots)
    return alive


class Presence(Periodic):
    """Heart-beats one process's row until stopped, then removes it."""

    def __init__(
        self, db: Database, process_id: str, engines: list[str], slots: int, interval: float
    ) -> None:
        super().__init__(interval)
        self.name = f"the presence heartbeat of {process_id}"
        self.db = db
        self.process_id = process_id
        self.engines = sorted(set(engines))
        self.slots = slots

    async def tick(self) -> None:
        await beat(self.db, self.process_id, self.engines, self.slots)

    async def finish(self) -> None:
        try:
            await leave(self.db, self.process_id)
        except Exception:
            log.exception("%s: could not remove its presence row", self.process_id)
