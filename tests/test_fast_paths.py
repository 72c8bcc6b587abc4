"""`POST /v1/generate` and `GET /v1/status` are answered without the framework
in their ordinary form (imagine.api.fastpath); every other form goes to the
FastAPI routes. Both must give the same answers and the same effects."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request

from imagine.api.services import Services, services

from conftest import RunningServer
from helpers import balance_and_ledger, run_db

BODY = {"prompt": "a lighthouse at dusk", "ratio": "1:1", "duration": 2, "seed": 7}


def counting_framework_calls(calls: list[str]) -> Any:
    """Every framework route resolves the `services` dependency; the fast paths never do."""

    def configure(app: FastAPI) -> None:
        async def counted(request: Request) -> Services:
            calls.append(f"{request.method} {request.url.path}")
            return await services(request)

        app.dependency_overrides[services] = counted

    return configure


def without_times(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in {"task_id", "created_at", "updated_at"}}


def test_both_paths_submit_and_report_alike(server_factory: Any) -> None:
    calls: list[str] = []
    server: RunningServer = server_factory(workers=0, configure_app=counting_framework_calls(calls))
    issued = server.new_key(credits=1000)
    with server.client(issued.key) as client:
        fast = client.post("/v1/generate", json=BODY)
        assert fast.status_code == 200, fast.text
        assert calls == []
        # A JSON media type other than application/json: the framework route parses it.
        framework = client.post(
            "/v1/generate",
            content=orjson.dumps(BODY),
            headers={"Content-Type": "application/vnd.api+json"},
        )
        assert framework.status_code == 200, framework.text
        assert calls == ["POST /v1/generate"]
        assert fast.json().keys() == framework.json().keys()
        assert {k: v for k, v in fast.headers.items() if k.startswith("x-ratelimit-limit")} == {
            k: v for k, v in framework.headers.items() if k.startswith("x-ratelimit-limit")
        }

        first, second = fast.json()["data"]["task_id"], framework.json()["data"]["task_id"]
        fast_view = client.get("/v1/status", params={"task_id": second})
        assert fast_view.status_code == 200
        assert calls == ["POST /v1/generate"]
        # A repeated parameter is not the ordinary form: the route answers (last value wins).
        framework_view = client.get(f"/v1/status?task_id=nope&task_id={second}")
        assert calls == ["POST /v1/generate", "GET /v1/status"]
        assert framework_view.json() == fast_view.json()
        assert framework_view.headers["content-type"] == fast_view.headers["content-type"]
        assert "x-ratelimit-remaining" in framework_view.headers
        assert "x-ratelimit-remaining" in fast_view.headers

        one = client.get("/v1/status", params={"task_id": first}).json()["data"]
        two = fast_view.json()["data"]
        assert without_times(one) == {**without_times(two), "queue_position": 1}
        assert two["queue_position"] == 2
        assert (
            one["request"]
            == two["request"]
            == {
                "mode": "normal",
                "prompt": BODY["prompt"],
                "ratio": "1:1",
                "duration": 2,
                "resolution": "480p",
                "seed": 7,
            }
        )

        # Errors from the fast path's own checks match the route's too.
        missing = client.get("/v1/status", params={"task_id": "task_missing"})
        assert missing.status_code == 404
        assert missing.json() == {"code": 404, "message": "Task not found", "error": "NOT_FOUND"}
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 1000 - 2 * 40


def test_anything_unusual_goes_to_the_route(server_factory: Any) -> None:
    calls: list[str] = []
    server: RunningServer = server_factory(workers=0, configure_app=counting_framework_calls(calls))
    issued = server.new_key(credits=1000)
    with server.client(issued.key) as client:
        unknown_field = client.post("/v1/generate", json={**BODY, "colour": "red"})
        assert unknown_field.status_code == 400
        not_json = client.post(
            "/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400  # the route refuses it before any dependency runs
        assert not_json.json()["error"] == "INVALID_REQUEST"
        twice = client.post(
            "/v1/generate",
            json=BODY,
            headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        )
        no_task_id = client.get("/v1/status")
        assert no_task_id.status_code == 400
        assert "task_id" in no_task_id.json()["message"]
    assert calls == ["POST /v1/generate"] * 2 + ["GET /v1/status"]
    assert twice.status_code == 200  # the route takes one of them; nothing lost
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 1000 - 40
