"""/metrics, request ids and log lines of a real server on loopback.

Servers in this process share one metrics registry (it is the process's), so
counts are compared before and after, never as absolute numbers.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from imagine.observability import logs
from imagine.observability.http import UNROUTED
from imagine.observability.metrics import RequestDurations

from conftest import RunningServer, make_settings, start_server
from helpers import wait_for_task
from processes import free_port

ServerFactory = Callable[..., RunningServer]
TOKEN = "a-metrics-token-of-some-length"
NOT_FOUND = {"http_route": UNROUTED, "http_response_status_code": "404"}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples(text, name)
        if all(found.get(k) == v for k, v in labels.items())
    )


def test_metrics_name_routes_by_template_and_count_the_work(
    sqlite_server: ServerFactory,
) -> None:
    server = sqlite_server()
    issued = server.new_key("pro", credits=400)
    with server.client(issued.key) as client, server.client() as anonymous:
        before = client.get("/metrics").text
        task_id = client.post("/v1/generate", json={"prompt": "a", "duration": 1}).json()["data"][
            "task_id"
        ]
        assert anonymous.get("/static/console.css").status_code == 200
        assert client.get(f"/openai/v1/videos/{task_id}").status_code == 200
        wait_for_task(client, task_id)
        assert client.get(f"/v1/tasks/{task_id}/deliveries").status_code == 200
        assert anonymous.get(f"/v1/status?task_id={task_id}").status_code == 401
        assert anonymous.get(f"/no/such/{task_id}").status_code == 404
        # A request is recorded just after its answer: scrape until the last one shows.
        deadline = time.monotonic() + 5
        while True:
            after = client.get("/metrics")
            found = total(after.text, "http_server_request_duration_seconds_count", **NOT_FOUND)
            if found > total(before, "http_server_request_duration_seconds_count", **NOT_FOUND):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert after.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "x-ratelimit-limit" not in after.headers  # off /v1's limits
    text = after.text
    routes = {
        labels["http_route"]
        for labels, _ in samples(text, "http_server_request_duration_seconds_count")
    }
    assert {
        "/v1/generate",
        "/v1/status",
        "/v1/tasks/{task_id}/deliveries",
        "/openai/v1/videos/{video_id}",  # a mounted application's route, whole
        "/static",
        UNROUTED,
    } <= routes
    assert all(
        task_id not in value
        for labels, _ in samples(text, "http_server_request_duration_seconds_count")
        for value in labels.values()
    )
    assert task_id not in text and issued.key not in text and issued.account_id not in text

    def grew(name: str, by: float, **labels: str) -> None:
        assert total(text, name, **labels) - total(before, name, **labels) == by, name

    grew("imagine_tasks_submitted_total", 1, outcome="accepted")
    grew("imagine_credits_debited_total", 40)
    grew("imagine_tasks_finished_total", 1, status="completed", reason="none")
    grew("imagine_engine_stage_seconds_count", 1, stage="generate")
    grew("imagine_task_run_seconds_count", 1, outcome="completed")
    grew("imagine_storage_op_seconds_count", 1, backend="local", op="save", result="ok")
    grew("http_server_request_duration_seconds_count", 1, **NOT_FOUND)
    # The queue, read from the database at the scrape.
    assert total(text, "imagine_workers_alive", engine="preview") == 1
    assert total(text, "imagine_queue_depth", engine="preview", state="pending") == 0
    assert total(text, "imagine_database_up") == 1


def test_metrics_can_require_a_token(sqlite_server: ServerFactory) -> None:
    server = sqlite_server(workers=0, metrics_token=TOKEN)
    with server.client() as client:
        refused = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert allowed.status_code == 200 and "imagine_build_info" in allowed.text


def test_metrics_can_move_to_a_port_of_their_own(sqlite_server: ServerFactory) -> None:
    port = free_port()
    server = sqlite_server(workers=0, metrics_port=port, metrics_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with server.client() as client:
        assert client.get("/metrics", headers=auth).status_code == 404
    own = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=auth)
    assert own.status_code == 200 and "imagine_queue_depth" in own.text
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200


def test_request_ids_are_taken_when_well_formed_and_made_otherwise(
    sqlite_server: ServerFactory,
) -> None:
    server = sqlite_server(workers=0)
    with server.client() as client:
        given = client.get("/livez", headers={"X-Request-ID": "req-2024.01:abc_9"})
        odd = client.get("/livez", headers={"X-Request-ID": "not ok; <script>"})
        refused = client.get("/v1/account")  # the gate's 401 gets one too
        made = [client.get("/livez").headers["x-request-id"] for _ in range(3)]
    assert given.headers["x-request-id"] == "req-2024.01:abc_9"
    assert odd.headers["x-request-id"] not in ("not ok; <script>", "")
    assert refused.status_code == 401 and refused.headers["x-request-id"]
    assert len(set(made)) == 3


@pytest.fixture
def failing_server(tmp_path: Path) -> Iterator[RunningServer]:
    def add_failing_route(app: FastAPI) -> None:
        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("a bug")

    running = start_server(make_settings(tmp_path / "data", workers=0), add_failing_route)
    yield running
    running.stop()


def test_an_unexpected_error_answers_the_envelope_with_its_request_id(
    failing_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with failing_server.client() as client:
        answer = client.get("/boom", headers={"X-Request-ID": "trace-me-1"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "trace-me-1"
    assert answer.json() == {
        "code": 500,
        "message": "Internal server error (request id trace-me-1)",
        "error": "INTERNAL_ERROR",
    }
    assert "RuntimeError: a bug" in caplog.text


# --- log lines ---------------------------------------------------------------------------

KEY = "imk_" + "A1b2C3d4" * 4 + "xYz123"


@pytest.mark.parametrize(
    "leaky",
    [
        f"auth failed for {KEY}",
        "secret whsec_MfKQ9r8GdvZ0PgW4BhT3ZgYqL5nJQk9bZ7n6Zy2cJ1U=",
        "headers {'authorization': 'Bearer sk-live-123456', 'cookie': 'session=abcdef'}",
        "GET https://b.s3.amazonaws.com/v.mp4?X-Amz-Credential=AKIA123&X-Amz-Signature=deadbeef",
        "/files/t/v.mp4?expires=1&signature=0123456789abcdef",
        "Authorization: Basic dXNlcjpwYXNz",
        "https://hooks.example/x?token=tok_123&api_key=k_456",
    ],
)
def test_secrets_are_redacted_from_any_line(leaky: str) -> None:
    cleaned = logs.redact(leaky)
    for secret in (
        KEY,
        "MfKQ9r8",
        "sk-live-123456",
        "abcdef",
        "AKIA123",
        "deadbeef",
        "0123456789abcdef",
        "dXNlcjpwYXNz",
        "tok_123",
        "k_456",
    ):
        assert secret not in cleaned, cleaned
    assert "[redacted]" in cleaned


def test_innocent_lines_are_left_alone() -> None:
    for line in (
        "task_0123 completed (attempt 2) in the design=ok mode",
        "the token bucket refilled; key imk_7Hq2…x9Lm listed",
        "signature verified",
    ):
        assert logs.redact(line) == line


def json_lines(emit: Callable[[logging.Logger], None]) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("imagine.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_context_the_fields_and_a_redacted_traceback() -> None:
    def emit(logger: logging.Logger) -> None:
        with logs.bound(request_id="r-1", task_id="task_1"):
            logger.info("hello %s", "world", extra=logs.fields(duration_ms=1.5))
            try:
                raise ValueError(f"bad key {KEY}")
            except ValueError:
                logger.exception("failed")
        logger.warning("outside")

    first, failed, outside = json_lines(emit)
    assert first["event"] == "hello world" and first["level"] == "info"
    assert first["request_id"] == "r-1" and first["task_id"] == "task_1"
    assert first["duration_ms"] == 1.5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["time"]))
    assert "ValueError" in str(failed["exception"]) and KEY not in json.dumps(failed)
    assert "request_id" not in outside


@pytest.mark.alone
def test_lines_are_batched_but_a_warning_writes_everything_before_it_at_once() -> None:
    stream = io.StringIO()
    handler = logs.LineHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("imagine.test-batch")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("first")
        assert stream.getvalue() == ""  # batched
        logger.warning("second")
        events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
        assert events == ["first", "second"]
        logger.info("third")
        deadline = time.monotonic() + 5 * logs.LineHandler.FLUSH_SECONDS
        while "third" not in stream.getvalue():
            assert time.monotonic() < deadline, "a batched line was never written"
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)


def test_request_durations_count_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = RequestDurations(
        "test_seconds", "test", ["route"], (0.01, 0.1), CollectorRegistry()
    )
    observe = histogram.observer("/x")
    for seconds in (0.01, 0.0100001, 0.1, 5.0):
        observe(seconds)
    (family,) = histogram.collect()
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("test_seconds_bucket", "0.01")] == 1  # le is inclusive
    assert got[("test_seconds_bucket", "0.1")] == 3
    assert got[("test_seconds_bucket", "+Inf")] == got[("test_seconds_count", None)] == 4
    assert got[("test_seconds_sum", None)] == pytest.approx(5.1200001)


def test_the_access_line_fast_path_redacts_a_key_in_a_path() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info", "json", stream)
    try:
        with logs.bound(request_id="r-2"):
            logs.log_fields(
                logging.getLogger("imagine.access"),
                logging.WARNING,  # written at once
                "request",
                {"path": f"/v1/status/{KEY}", "status": 404},
            )
        (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], root.level = handlers, level
    assert line["path"] == "/v1/status/imk_[redacted]" and line["request_id"] == "r-2"
