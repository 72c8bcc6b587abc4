"""`/metrics`: this process's instruments, and the queue as the database has it.

Every process serves its own instruments (`imagine.observability.metrics`).
An API process adds `QueueGauges`: queue depth and oldest pending task per
engine, live workers per engine, the webhook outbox. Those are read from the
database when scraped, at most once a second per process whatever the
number of scrapers, so every API process reports the same, true figures:
aggregate them with `max`, not `sum`. Worker processes leave them out.

Where it is served: at `/metrics` on the API's own port, or, with
`IMAGINE_METRICS_PORT`, on a port of its own (`MetricsServer`, a small
threaded HTTP server; `imagine worker` has no other). Either way an
`IMAGINE_METRICS_TOKEN` makes it require `Authorization: Bearer <token>`;
it is never behind `/v1`'s keys or rate limits.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from imagine.api.security import SECURITY_HEADERS
from imagine.db.database import Database
from imagine.ids import utcnow
from imagine.observability.metrics import REGISTRY
from imagine.queue.overview import waiting_and_running
from imagine.queue.presence import alive_by_engine
from imagine.tasks.states import PENDING, PROCESSING
from imagine.webhooks import repository as outbox

log = logging.getLogger("imagine.metrics")

CACHE_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class QueueFigures:
    depth: dict[tuple[str, str], int]
    oldest_pending_at: dict[str, datetime]
    workers_alive: dict[str, int]
    outbox_depth: dict[str, int]
    outbox_oldest_at: datetime | None


async def read_figures(db: Database, alive_within: float) -> QueueFigures:
    async with db.read() as session:
        waiting = await waiting_and_running(session)
    backlog = await outbox.backlog(db)
    return QueueFigures(
        depth=waiting.counts,
        oldest_pending_at=waiting.oldest_pending_at,
        workers_alive=await alive_by_engine(db, alive_within),
        outbox_depth=backlog.by_status,
        outbox_oldest_at=backlog.oldest_created_at,
    )


class QueueGauges:
    """A Prometheus collector over the latest `QueueFigures`; `refresh()` (async,
    cached for `CACHE_SECONDS`, one read at a time) before each scrape."""

    def __init__(self, db: Database, engines: Iterable[str], alive_within: float) -> None:
        self.db = db
        self.engines = sorted(set(engines))  # always reported, 0 when idle
        self.alive_within = alive_within
        self._figures: QueueFigures | None = None
        self._read_at = -CACHE_SECONDS
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < CACHE_SECONDS:
            return
        async with self._lock:
            if time.monotonic() - self._read_at < CACHE_SECONDS:
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    self._figures = await read_figures(self.db, self.alive_within)
            except Exception as exc:
                log.warning("reading the queue for /metrics failed: %r", exc)
                self._figures = None
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        figures = self._figures
        up = GaugeMetricFamily(
            "imagine_database_up",
            "1 when this scrape's read of the queue from the database worked.",
        )
        up.add_metric([], 0 if figures is None else 1)
        yield up
        if figures is None:
            return
        now = utcnow()
        engines = sorted({*self.engines, *(e for e, _ in figures.depth), *figures.workers_alive})
        depth = GaugeMetricFamily(
            "imagine_queue_depth", "Tasks pending or processing now.", labels=["engine", "state"]
        )
        oldest = GaugeMetricFamily(
            "imagine_queue_oldest_age_seconds",
            "Age of the oldest pending task (0 when none waits).",
            labels=["engine"],
        )
        alive = GaugeMetricFamily(
            "imagine_workers_alive",
            "Worker slots in processes that heart-beat within a lease.",
            labels=["engine"],
        )
        for engine in engines:
            for state in (PENDING, PROCESSING):
                depth.add_metric([engine, state], figures.depth.get((engine, state), 0))
            created = figures.oldest_pending_at.get(engine)
            oldest.add_metric([engine], 0.0 if created is None else _age(now, created))
            alive.add_metric([engine], figures.workers_alive.get(engine, 0))
        yield from (depth, oldest, alive)
        backlog = GaugeMetricFamily(
            "imagine_webhook_outbox_depth",
            "Webhook events waiting to be delivered (pending) or being delivered.",
            labels=["state"],
        )
        for state, count in sorted(figures.outbox_depth.items()):
            backlog.add_metric([state], count)
        yield backlog
        outbox_age = GaugeMetricFamily(
            "imagine_webhook_outbox_oldest_age_seconds",
            "Age of the oldest webhook event not yet delivered or given up (0 when none).",
        )
        created = figures.outbox_oldest_at
        outbox_age.add_metric([], 0.0 if created is None else _age(now, created))
        yield outbox_age


def _age(now: datetime, then: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def render(gauges: QueueGauges | None) -> bytes:
    """The text exposition format (0.0.4): the process's instruments, then the queue."""
    body = generate_latest(REGISTRY)
    if gauges is not None:
        body += generate_latest(gauges)
    return body


def authorised(header: str | None, token: str | None) -> bool:
    if token is None:
        return True
    expected = f"Bearer {token}".encode()
    return header is not None and hmac.compare_digest(header.encode(), expected)


_UNAUTHORISED = b"Bearer token required\n"


def metrics_endpoint(
    gauges: QueueGauges | None, token: str | None
) -> Callable[[Request], Awaitable[Response]]:
    """The `/metrics` route of the API app."""

    async def metrics(request: Request) -> Response:
        if not authorised(request.headers.get("authorization"), token):
            response = Response(_UNAUTHORISED, status_code=401, media_type="text/plain")
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            if gauges is not None:
                await gauges.refresh()
            response = Response(render(gauges), media_type=CONTENT_TYPE_PLAIN_0_0_4)
        response.raw_headers.extend(SECURITY_HEADERS)
        return response

    return metrics


class MetricsServer:
    """`/metrics` (and `/livez`) on a port of its own, served from a thread.

    The queue gauges are refreshed on `loop`, the process's event loop, where
    the database lives."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        gauges: QueueGauges | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if gauges is not None and loop is None:
            raise ValueError("queue gauges are read on the event loop: pass it")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, content_type = server.answer(
                    self.path, self.headers.get("Authorization")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in SECURITY_HEADERS:
                    self.send_header(name.decode(), value.decode())
                if status == 401:
                    self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics port: " + format, *args)

        self._token = token
        self._gauges = gauges
        self._loop = loop
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="metrics-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def answer(self, target: str, authorization: str | None) -> tuple[int, bytes, str]:
        path = target.partition("?")[0]
        if path == "/livez":
            return 200, b'{"status":"ok"}', "application/json"
        if path != "/metrics":
            return 404, b"Not found\n", "text/plain"
        if not authorised(authorization, self._token):
            return 401, _UNAUTHORISED, "text/plain"
        if self._gauges is not None and self._loop is not None:
            refresh = asyncio.run_coroutine_threadsafe(self._gauges.refresh(), self._loop)
            try:
                refresh.result(timeout=READ_TIMEOUT_SECONDS + 1)
            except Exception as exc:  # a stalled loop still gets the process's metrics
                log.warning("queue gauges not refreshed: %r", exc)
        return 200, render(self._gauges), CONTENT_TYPE_PLAIN_0_0_4
