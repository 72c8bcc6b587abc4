"""The parts every process role shares: services from settings, and a pool of workers.

`imagine serve` runs the API with a pool inside it; `imagine worker` runs a
pool alone. Both prepare the database the same way.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

from imagine import private_files
from imagine.api.ratelimit import RateLimiter
from imagine.api.services import Services
from imagine.db.database import Database
from imagine.db.schema import ensure_current
from imagine.engines.registry import create_engine, preview_engine
from imagine.media.fetch import ImageFetcher
from imagine.moderation import build_moderator
from imagine.observability import tracing
from imagine.queue.presence import Presence
from imagine.queue.worker import Worker, WorkerConfig
from imagine.settings import Settings
from imagine.storage import create_storage
from imagine.tasks.inputs import InputStore, InputSweeper
from imagine.webhooks.dispatcher import Dispatcher
from imagine.webhooks.sealing import SecretBox


def build_services(settings: Settings) -> Services:
    private_files.prepare_data_dir(settings.data_dir)
    engine = create_engine(settings)
    storage = create_storage(settings)
    db = Database(settings.resolved_database_url)
    tracing.instrument_database(db)
    return Services(
        settings=settings,
        db=db,
        storage=storage,
        engine=engine,
        # Test keys' tasks always run on the preview engine, whatever serves live keys.
        test_engine=engine if engine.name == "preview" else preview_engine(settings),
        limiter=RateLimiter.from_url(settings.redis_url),
        inputs=InputStore(storage),
        webhook_secrets=SecretBox.for_settings(settings),
        moderator=build_moderator(settings),
    )


async def prepare_database(db: Database, settings: Settings) -> None:
    """Bring the schema to this version, or refuse (`SchemaOutOfDate`)."""
    await ensure_current(db, auto_upgrade=settings.should_auto_migrate)


def alive_within(settings: Settings) -> float:
    """How recently a worker process must have heart-beaten to count as alive."""
    return max(settings.lease_seconds, 2 * settings.heartbeat_interval)


class WorkerPool:
    """N workers sharing one engine, storage and image fetcher, the webhook
    dispatcher (which runs wherever workers run, so an API-only process makes
    no outbound connections), the sweep of left-over input images, and the
    process's presence row (`queue.presence`)."""

    def __init__(self, svc: Services, count: int) -> None:
        settings = svc.settings
        self.moderator = svc.moderator
        self.fetcher = ImageFetcher(
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            timeout=settings.image_fetch_timeout,
            allow_private=settings.allow_private_urls,
        )
        workdir = private_files.private_dir(settings.data_dir / "work")
        config = WorkerConfig(
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_interval,
            poll_interval=settings.poll_interval,
            task_timeout=settings.task_timeout_seconds,
            shutdown_grace=settings.shutdown_grace_seconds,
            image_max_pixels=settings.image_max_pixels,
            task_max_pixels=settings.task_max_pixels,
        )
        extra = {svc.test_engine.name: svc.test_engine}
        self.workers = [
            Worker(
                svc.db,
                svc.engine,
                svc.storage,
                self.fetcher,
                config,
                workdir,
                svc.wakeup,
                extra_engines=extra,
                moderator=svc.moderator,
            )
            for _ in range(count)
        ]
        self.dispatcher = Dispatcher(svc.db, svc.storage, settings) if count else None
        self.sweeper = (
            InputSweeper(svc.db, svc.inputs, settings.input_retention_seconds) if count else None
        )
        process_id = f"{socket.gethostname()[:50]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.presence = (
            Presence(
                svc.db,
                process_id,
                [engine.name for engine in (svc.engine, svc.test_engine)],
                count,
                settings.heartbeat_interval,
            )
            if count
            else None
        )
        self._running: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.workers:
            # An engine's heavy start-up (model weights, warm-up) happens before the
            # first claim, and only in processes that run workers.
            prepare = getattr(self.workers[0].engine, "prepare", None)
            if prepare is not None:
                prepare()
            if self.moderator is not None:
                self.moderator.prepare()  # its classifiers, once for all the workers
        self._running = [asyncio.create_task(w.run(), name=w.name) for w in self.workers]
        if self.dispatcher is not None:
            self._running.append(
                asyncio.create_task(self.dispatcher.run(), name=self.dispatcher.name)
            )
        if self.sweeper is not None:
            self._running.append(asyncio.create_task(self.sweeper.run(), name="input-sweeper"))
        if self.presence is not None:
            self._running.append(asyncio.create_task(self.presence.run(), name="presence"))

    async def stop(self) -> None:
        """Finish or release in-flight tasks and deliveries, then close shared clients."""
        for worker in self.workers:
            worker.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.presence is not None:
            self.presence.stop()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.fetcher.aclose()
        if self.moderator is not None:
            await self.moderator.aclose()

    async def wait(self) -> None:
        await asyncio.gather(*self._running, return_exceptions=True)
