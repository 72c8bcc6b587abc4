"""The parts every process role shares: services from settings, and a pool of workers.

`imagine serve` runs the API with a pool inside it; `imagine worker` runs a
pool alone. Both prepare the database the same way.
"""

from __future__ import annotations

import asyncio

from imagine.api.ratelimit import RateLimiter
from imagine.api.services import Services
from imagine.db.database import Database
from imagine.db.schema import ensure_current
from imagine.engines.registry import create_engine
from imagine.media.fetch import ImageFetcher
from imagine.queue.worker import Worker, WorkerConfig
from imagine.settings import Settings
from imagine.storage import create_storage


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Services(
        settings=settings,
        db=Database(settings.resolved_database_url),
        storage=create_storage(settings),
        engine=create_engine(settings),
        limiter=RateLimiter.from_url(settings.redis_url),
    )


async def prepare_database(db: Database, settings: Settings) -> None:
    """Bring the schema to this version, or refuse (`SchemaOutOfDate`)."""
    await ensure_current(db, auto_upgrade=settings.should_auto_migrate)


class WorkerPool:
    """N workers sharing one engine, storage and image fetcher."""

    def __init__(self, svc: Services, count: int) -> None:
        settings = svc.settings
        self.fetcher = ImageFetcher(
            max_bytes=settings.image_max_bytes,
            timeout=settings.image_fetch_timeout,
            allow_private=settings.allow_private_urls,
        )
        workdir = settings.data_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        config = WorkerConfig(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_interval,
            poll_interval=settings.poll_interval,
            task_timeout=settings.task_timeout_seconds,
            shutdown_grace=settings.shutdown_grace_seconds,
        )
        self.workers = [
            Worker(svc.db, svc.engine, svc.storage, self.fetcher, config, workdir, svc.wakeup)
            for _ in range(count)
        ]
        self._running: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._running = [asyncio.create_task(w.run(), name=w.name) for w in self.workers]

    async def stop(self) -> None:
        """Finish or release in-flight tasks, then close shared clients."""
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.fetcher.aclose()

    async def wait(self) -> None:
        await asyncio.gather(*self._running, return_exceptions=True)
