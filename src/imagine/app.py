"""`create_app(settings)`: builds the whole service; nothing is created at import."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from imagine import __version__
from imagine.accounts import admin_endpoints as admin
from imagine.accounts import endpoints as account
from imagine.accounts import service as accounts
from imagine.api.envelope import document_errors_as_envelopes, install_error_handlers, success
from imagine.api.fastpath import FastPaths
from imagine.api.gate import Admission, V1Gate
from imagine.api.openapi import answers
from imagine.compat import install_compat, start_grpc
from imagine.console import install_console
from imagine.moderation import endpoints as moderation
from imagine.observability.exposition import MetricsServer, QueueGauges, metrics_endpoint
from imagine.observability.health import Health, install_health
from imagine.observability.http import PROBES, RequestTelemetry
from imagine.runtime import WorkerPool, alive_within, build_services, prepare_database
from imagine.settings import Settings
from imagine.storage import endpoints as files
from imagine.tasks import endpoints as tasks
from imagine.web import docs
from imagine.web.assets import mount_static
from imagine.webhooks import endpoints as webhooks

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger("imagine")


def create_app(settings: Settings) -> FastAPI:
    svc = build_services(settings)
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    gauges = QueueGauges(svc.db, [svc.engine.name, svc.test_engine.name], alive_within(settings))
    # One key cache and one set of rate-limit windows for every door: /v1, the
    # OpenAI-compatible routes and the gRPC face.
    admission = Admission(
        authenticate=accounts.KeyCache(svc.db, settings.key_cache_seconds).authenticate,
        limiter=svc.limiter,
        limit_for_plan=settings.rate_limit_for,
        fail_open=settings.rate_limit_fail_open,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await prepare_database(svc.db, settings)
        metrics_server = None
        if settings.metrics and settings.metrics_port is not None:
            metrics_server = MetricsServer(
                settings.metrics_host,
                settings.metrics_port,
                token=token,
                gauges=gauges,
                loop=asyncio.get_running_loop(),
            )
            metrics_server.start()
        grpc_face = await start_grpc(svc, admission)
        pool = WorkerPool(svc, settings.workers)
        pool.start()
        # Everything built so far lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall requests for
        # tens of milliseconds.
        gc.freeze()
        try:
            yield
        finally:
            if grpc_face is not None:
                await grpc_face.stop()
            await pool.stop()
            if metrics_server is not None:
                metrics_server.stop()
            await svc.db.dispose()

    app = FastAPI(
        title="Imagine",
        version=__version__,
        description="Text- and image-to-video generation (the Grok Imagine API contract).",
        lifespan=lifespan,
        # Served by imagine.web.docs from vendored files, not from a CDN.
        docs_url=None,
        redoc_url=None,
        telemetry=_TRACING_ONLY,
    )
    app.state.services = svc
    health = Health(
        svc.db,
        svc.limiter,
        svc.storage,
        timeout=settings.readiness_timeout_seconds,
        cache_seconds=settings.readiness_cache_seconds,
        fail_open=settings.rate_limit_fail_open,
        alive_within=alive_within(settings),
    )
    app.state.health = health
    install_error_handlers(app)
    document_errors_as_envelopes(app)
    app.include_router(tasks.router)
    app.include_router(account.router)
    app.include_router(webhooks.router)
    app.include_router(admin.router)
    app.include_router(moderation.router)
    app.include_router(files.router)
    app.include_router(docs.router)
    mount_static(app)
    install_compat(app, svc, admission)
    if settings.console:
        install_console(app, svc)
    install_health(app, health)
    if settings.metrics and settings.metrics_port is None:
        app.add_route("/metrics", metrics_endpoint(gauges, token), include_in_schema=False)

    @app.get(
        "/healthz",
        tags=["ops"],
        responses=answers(
            {"status": "ok", "engine": "preview", "version": __version__}, gate=False
        ),
    )
    async def healthz() -> JSONResponse:
        async with svc.db.read() as session:
            await session.execute(text("SELECT 1"))
        return success({"status": "ok", "engine": svc.engine.name, "version": __version__})

    # Added first, so it runs inside the gate.
    app.add_middleware(FastPaths, handlers=tasks.fast_handlers(svc))
    app.add_middleware(V1Gate, admission=admission, max_body_bytes=settings.body_limit)
    # Outermost: every answer, the gate's refusals included, gets its id and line.
    app.add_middleware(RequestTelemetry, metrics=settings.metrics)
    return app


# FastAPI's own OpenTelemetry support, for spans only (metrics are Prometheus,
# logs are ours), and only once `imagine.observability.tracing` has installed
# a tracer provider; probes and scrapes make no spans.
_TRACING_ONLY: TelemetryConfig = {
    "metrics": False,
    "logs": False,
    "auto_configure": False,
    "exclude": lambda scope: scope.get("path") in PROBES,
}
