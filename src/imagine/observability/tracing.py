"""Traces over OpenTelemetry: optional, and free when off.

With the `otel` extra installed and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, `configure()` installs a tracer
provider that batches spans to that OTLP/HTTP endpoint, sampled as
`OTEL_TRACES_SAMPLER` says (parent-based, always on, by default), and
instruments the database engines, asyncpg and httpx. FastAPI then traces
every request itself (`create_app` excludes the probes and `/metrics`).
A submit stores the request's `traceparent` with its task, and the worker
runs the task in a CONSUMER span `process <engine>` whose parent, and link,
is that context: one trace from the POST to the finished video, across
processes. `OTEL_SDK_DISABLED=true` turns it all off.

Without the extra or the endpoint nothing of the SDK is imported, and every
function here returns at its first line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagine.db.database import Database
    from imagine.queue.repository import ClaimedTask

log = logging.getLogger("imagine.tracing")

_tracer: Any = None  # an opentelemetry Tracer once configured
_provider: Any = None


def requested() -> bool:
    """Whether the environment asks for traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def enabled() -> bool:
    return _tracer is not None


def configure(service_name: str) -> bool:
    """Start exporting spans if the environment asks for it; True when it does."""
    global _tracer, _provider
    if _tracer is not None or not requested():
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: %s", exc
        )
        return False
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument()
    _provider = provider
    _tracer = trace.get_tracer("imagine")
    log.info("exporting traces over OTLP as %s", resource.attributes.get(SERVICE_NAME))
    return True


def shutdown() -> None:
    """Send the spans still buffered (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def instrument_database(db: Database) -> None:
    """Spans for every statement this database's SQLAlchemy engines run."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(engines=list(db.sync_engines))


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, to store with a task; None when off."""
    if _tracer is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def task_span(claimed: ClaimedTask) -> Iterator[None]:
    """The worker's span of one attempt, joined to the submit's trace."""
    if _tracer is None:
        yield
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract({"traceparent": claimed.traceparent or ""})
    submitted = trace.get_current_span(parent).get_span_context()
    links = [trace.Link(submitted)] if submitted.is_valid else []
    with _tracer.start_as_current_span(
        f"process {claimed.engine}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "imagine",
            "messaging.operation.type": "process",
            "messaging.destination.name": claimed.engine,
            "messaging.message.id": claimed.task_id,
            "imagine.attempt": claimed.attempt,
        },
    ):
        yield
