"""`create_app(settings)`: builds the whole service; nothing is created at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from imagine import __version__
from imagine.accounts import service as accounts
from imagine.accounts.service import Principal
from imagine.api.envelope import install_error_handlers, success
from imagine.api.gate import V1Gate
from imagine.api.ratelimit import RateLimiter
from imagine.api.services import Services
from imagine.db.database import Database
from imagine.engines.registry import create_engine
from imagine.media.fetch import ImageFetcher
from imagine.queue.worker import Worker, WorkerConfig
from imagine.settings import Settings
from imagine.storage import endpoints as files
from imagine.storage.local import LocalStorage, load_or_create_secret
from imagine.tasks import endpoints as tasks

log = logging.getLogger("imagine")


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(settings.data_dir, settings.secret_key)
    return Services(
        settings=settings,
        db=Database(settings.resolved_database_url),
        storage=LocalStorage(settings.files_dir, secret, settings.file_url_ttl_seconds),
        engine=create_engine(settings),
        limiter=RateLimiter(),
    )


def build_workers(svc: Services, count: int) -> tuple[list[Worker], ImageFetcher]:
    settings = svc.settings
    fetcher = ImageFetcher(
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
    )
    workers = [
        Worker(svc.db, svc.engine, svc.storage, fetcher, config, workdir, wakeup=svc.wakeup)
        for _ in range(count)
    ]
    return workers, fetcher


def create_app(settings: Settings) -> FastAPI:
    svc = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await svc.db.create_schema()
        workers, fetcher = build_workers(svc, settings.workers)
        running = [asyncio.create_task(w.run(), name=w.name) for w in workers]
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.gather(*running, return_exceptions=True)
            await fetcher.aclose()
            await svc.db.dispose()

    app = FastAPI(
        title="Imagine",
        version=__version__,
        description="Text- and image-to-video generation (the Grok Imagine API contract).",
        lifespan=lifespan,
    )
    app.state.services = svc
    install_error_handlers(app)
    app.include_router(tasks.router)
    app.include_router(files.router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        async with svc.db.read() as session:
            await session.execute(text("SELECT 1"))
        return success({"status": "ok", "engine": svc.engine.name, "version": __version__})

    async def authenticate(key: str) -> Principal | None:
        async with svc.db.read() as session:
            return await accounts.authenticate(session, key)

    app.add_middleware(
        V1Gate,
        authenticate=authenticate,
        limiter=svc.limiter,
        limit_for_plan=settings.rate_limit_for,
        max_body_bytes=settings.max_body_bytes,
    )
    return app
