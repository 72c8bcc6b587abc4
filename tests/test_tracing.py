"""Traces with the `otel` extra: a submit and its run in a separate worker
process form one trace, received over OTLP/HTTP by a loopback receiver that
decodes the real protocol (opentelemetry-proto). Without the endpoint, none
of the SDK is imported."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from helpers import wait_for_task
from loopback_doubles import _Quiet, _serving
from processes import ImagineProcess, ServeProcess, WorkerProcess, cli


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]


class Receiver(_Quiet):
    """`POST /v1/traces` as an OpenTelemetry collector takes it."""

    spans: ClassVar[list[Span]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                service=service,
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes={
                                    a.key: a.value.string_value or a.value.int_value
                                    for a in span.attributes
                                },
                                links=[
                                    (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                                ],
                            )
                        )
        self.reply(
            200,
            ExportTraceServiceResponse().SerializeToString(),
            {"Content-Type": "application/x-protobuf"},
        )


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.spans = []
    with _serving(Receiver) as url:
        yield url


CONSUMER = 5  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_CONSUMER


def test_a_submit_and_its_run_in_a_worker_process_share_one_trace(
    tmp_path: Path, postgres: Any, receiver: str, processes: list[ImagineProcess]
) -> None:
    database_url = postgres.create()
    env = {
        "IMAGINE_DATABASE_URL": database_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    made = cli(
        "keys", "create", "--json", "--credits", "100", "--data-dir", str(tmp_path / "cli"), env=env
    )
    key = json.loads(made.stdout)["key"]
    api = ServeProcess(tmp_path / "api", "--no-workers", env=env)
    worker = WorkerProcess(tmp_path / "worker", env=env)
    processes.extend([api, worker])
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as client:
        task_id = client.post("/v1/generate", json={"prompt": "traced", "duration": 1}).json()[
            "data"
        ]["task_id"]
        assert wait_for_task(client, task_id)["status"] == "completed"
    for proc in (api, worker):
        proc.terminate()  # flushes what is still batched

    with Receiver.lock:
        spans = list(Receiver.spans)
    process = [s for s in spans if s.attributes.get("messaging.message.id") == task_id]
    assert len(process) == 1, [s.name for s in spans]
    run = process[0]
    assert run.service == "imagine-worker" and run.name == "process preview"
    assert run.kind == CONSUMER
    trace = [s for s in spans if s.trace_id == run.trace_id]
    by_id = {s.span_id: s for s in trace}
    submit = by_id[run.parent_id]  # the API's request span is the parent, in the same trace
    assert submit.service == "imagine-api"
    assert run.links == [(run.trace_id, submit.span_id)]
    services = {s.service for s in trace}
    assert services == {"imagine-api", "imagine-worker"}
    # Database calls on both sides, and the worker's under its run.
    database = [s for s in trace if "db.system" in s.attributes or "db.system.name" in s.attributes]
    assert {s.service for s in database} == {"imagine-api", "imagine-worker"}
    assert any(s.parent_id == run.span_id for s in database if s.service == "imagine-worker")
    # Probes and scrapes make no spans.
    assert not [
        s for s in spans if "readyz" in s.name or "metrics" in s.name or "healthz" in s.name
    ]


# Without the gRPC face: xai-sdk, which it (and the xai engine) loads, brings
# the OpenTelemetry SDK along as a dependency of its own.
NO_SDK = """
import asyncio, sys, httpx
from opentelemetry import trace
from imagine.observability import tracing
from imagine.app import create_app
from imagine.settings import load_settings

assert not tracing.configure("imagine-api")
app = create_app(load_settings(data_dir=sys.argv[1], workers=0, grpc_port=0))

async def main():
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/livez")).status_code == 200

asyncio.run(main())
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none installed
print(sorted(m for m in sys.modules if m.startswith(
    ("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter"))))
"""


@pytest.mark.parametrize(
    "otel_env",
    [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}],
    ids=["no endpoint", "disabled"],
)
def test_without_the_endpoint_nothing_of_the_sdk_is_imported(
    tmp_path: Path, otel_env: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    ran = subprocess.run(
        [sys.executable, "-c", NO_SDK, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env={**env, **otel_env},
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[]"
