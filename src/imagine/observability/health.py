"""`/livez` and `/readyz`: is the process alive, and should it get traffic.

- `/livez` answers as long as the event loop does; it checks nothing else,
  so a database outage never makes an orchestrator restart every process.
- `/readyz` checks what a request needs, each check under
  `IMAGINE_READINESS_TIMEOUT_SECONDS` and all at once, and reuses its answer
  for `IMAGINE_READINESS_CACHE_SECONDS` (one check at a time, however many
  probes): the database answers and is at this version's migration head;
  the rate-limit store (Redis) answers, when there is one; storage takes a
  write (checked at the first probe, then at most once a minute in the
  background: never on a probe's time). 503 with the
  envelope naming what failed. A Redis outage with
  `IMAGINE_RATE_LIMIT_FAIL_OPEN` is `degraded`, still 200: requests are served.
  Live workers per engine are reported, not required (an API-only process
  has none of its own; the `imagine_workers_alive` alert watches them).
- On SIGTERM (`drain()`, called by `imagine.server.ImagineServer`) `/readyz`
  turns 503 `draining` at once, before the server stops taking connections.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from imagine.api.envelope import FastJSONResponse, success
from imagine.api.ratelimit import RateLimiter
from imagine.db.database import Database
from imagine.db.schema import head_revision
from imagine.errors import ServiceUnavailable
from imagine.queue.presence import alive_by_engine
from imagine.storage.base import Storage

STORAGE_CHECK_SECONDS = 60.0
STORAGE_TIMEOUT_SECONDS = 10.0  # an object store's write takes a round trip or two


@dataclass
class Check:
    ok: bool
    ms: float
    error: str | None = None
    required: bool = True

    def view(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"ok": self.ok, "ms": round(self.ms, 1)}
        if self.error is not None:
            shown["error"] = self.error
        if not self.required:
            shown["required"] = False
        return shown


@dataclass
class Readiness:
    status: str  # ready | degraded | unready | draining
    checks: dict[str, Check] = field(default_factory=dict)
    workers: dict[str, int] | None = None

    @property
    def ready(self) -> bool:
        return self.status in ("ready", "degraded")

    def failed(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.required and not check.ok]

    def view(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "status": self.status,
            "checks": {name: check.view() for name, check in self.checks.items()},
        }
        if self.workers is not None:
            shown["workers_alive"] = self.workers
        return shown


class Health:
    def __init__(
        self,
        db: Database,
        limiter: RateLimiter,
        storage: Storage,
        *,
        timeout: float,
        cache_seconds: float,
        fail_open: bool,
        alive_within: float,
    ) -> None:
        self.db = db
        self.limiter = limiter
        self.storage = storage
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.fail_open = fail_open
        self.alive_within = alive_within
        self.head = head_revision()
        self.draining = False
        self._answer: Readiness | None = None
        self._answered_at = 0.0
        self._storage_check: Check | None = None
        self._storage_checked_at = 0.0
        self._storage_refresh: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def drain(self) -> None:
        """From now on `/readyz` answers 503 (the process is shutting down)."""
        self.draining = True

    async def readiness(self) -> Readiness:
        if self.draining:
            return Readiness("draining")
        async with self._lock:
            if self._answer is None or time.monotonic() - self._answered_at >= self.cache_seconds:
                self._answer = await self._check()
                self._answered_at = time.monotonic()
            return self._answer

    async def _check(self) -> Readiness:
        named: dict[str, Awaitable[Check]] = {"database": self._timed(self._database)}
        if self.limiter.is_shared:
            named["redis"] = self._timed(self._redis, required=not self.fail_open)
        named["storage"] = self._storage()
        results = await asyncio.gather(*named.values())
        checks = dict(zip(named, results, strict=True))
        workers: dict[str, int] | None = None
        if checks["database"].ok:
            try:
                async with asyncio.timeout(self.timeout):
                    workers = await alive_by_engine(self.db, self.alive_within)
            except Exception:
                workers = None
        if any(c.required and not c.ok for c in checks.values()):
            status = "unready"
        elif all(c.ok for c in checks.values()):
            status = "ready"
        else:
            status = "degraded"
        return Readiness(status, checks, workers)

    async def _timed(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        required: bool = True,
        limit: float | None = None,
    ) -> Check:
        limit = limit or self.timeout
        started = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(limit):
                await probe()
        except TimeoutError:
            error = f"no answer within {limit:g} s"
        except Exception as exc:
            error = type(exc).__name__
        ms = (time.perf_counter() - started) * 1000
        return Check(ok=error is None, ms=ms, error=error, required=required)

    async def _database(self) -> None:
        async with self.db.read() as session:
            current = await session.scalar(text("SELECT version_num FROM alembic_version"))
        if current != self.head:
            raise SchemaBehind(f"schema at {current}, this version needs {self.head}")

    async def _redis(self) -> None:
        if not await self.limiter.ping():
            raise ConnectionError("no PONG")

    async def _storage(self) -> Check:
        """The latest write-and-delete's result: waited for the first time, then
        refreshed in the background once it is a minute old."""
        if self._storage_check is None:
            await self._check_storage()
        elif time.monotonic() - self._storage_checked_at >= STORAGE_CHECK_SECONDS and (
            self._storage_refresh is None or self._storage_refresh.done()
        ):
            self._storage_refresh = asyncio.create_task(self._check_storage())
        assert self._storage_check is not None
        return self._storage_check

    async def _check_storage(self) -> None:
        async def write_and_delete() -> None:
            name = f"health/{os.getpid()}-{secrets.token_hex(4)}"
            key = await asyncio.to_thread(self.storage.put, name, b"ok")
            await asyncio.to_thread(self.storage.delete, key)

        check = await self._timed(write_and_delete, limit=STORAGE_TIMEOUT_SECONDS)
        self._storage_check, self._storage_checked_at = check, time.monotonic()


class SchemaBehind(Exception):
    """The database answers, but not at the schema this code needs."""


def install_health(app: FastAPI, health: Health) -> None:
    @app.get("/livez", tags=["ops"], include_in_schema=False)
    async def livez() -> JSONResponse:
        return success({"status": "ok"})

    @app.get("/readyz", tags=["ops"], include_in_schema=False)
    async def readyz() -> JSONResponse:
        readiness = await health.readiness()
        if readiness.ready:
            return success(readiness.view())
        reasons = readiness.failed() or [readiness.status]
        error = ServiceUnavailable(f"Not ready: {', '.join(reasons)}")
        return FastJSONResponse(
            {
                "code": error.status,
                "message": error.message,
                "error": error.error,
                "data": readiness.view(),
            },
            status_code=error.status,
        )
