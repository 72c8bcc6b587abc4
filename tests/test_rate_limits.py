"""Per-key, per-minute limits: exact, counted on every /v1 request, with headers."""

from __future__ import annotations

import time
from typing import Any

from imagine.db.models import IdempotencyRecord

from conftest import RunningServer
from helpers import balance_and_ledger, count_rows, run_db


def test_limit_passes_exactly_then_429_with_headers(server_factory: Any) -> None:
    server: RunningServer = server_factory(rate_limit_free=5)
    issued = server.new_key(credits=1000)
    with server.client(issued.key) as client:
        remaining = []
        for _ in range(5):
            answer = client.get("/v1/status", params={"task_id": "task_nope"})
            assert answer.status_code == 404
            assert answer.headers["x-ratelimit-limit"] == "5"
            remaining.append(int(answer.headers["x-ratelimit-remaining"]))
            reset = int(answer.headers["x-ratelimit-reset"])
            assert time.time() < reset <= time.time() + 61
        assert remaining == [4, 3, 2, 1, 0]

        refused = client.post("/v1/generate", json={"prompt": "over the limit"})
        assert refused.status_code == 429
        body = refused.json()
        assert body == {
            "code": 429,
            "message": body["message"],
            "error": "RATE_LIMITED",
        }
        assert refused.headers["x-ratelimit-remaining"] == "0"
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert int(refused.headers["x-ratelimit-reset"]) >= int(time.time())

    # The refused submit charged nothing and created nothing.
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 1000


def test_limits_are_per_key_and_per_plan(server_factory: Any) -> None:
    server: RunningServer = server_factory(rate_limit_free=2, rate_limit_pro=4)
    free, pro = server.new_key("free"), server.new_key("pro")
    with server.client(free.key) as client:
        codes = [client.get("/v1/status", params={"task_id": "x"}).status_code for _ in range(3)]
    assert codes == [404, 404, 429]
    with server.client(pro.key) as client:
        codes = [client.get("/v1/status", params={"task_id": "x"}).status_code for _ in range(5)]
        assert client.get("/v1/status", params={"task_id": "x"}).headers["x-ratelimit-limit"] == "4"
    assert codes == [404, 404, 404, 404, 429]


def test_rate_limited_idempotent_submit_records_nothing(server_factory: Any) -> None:
    server: RunningServer = server_factory(rate_limit_free=1)
    issued = server.new_key()
    with server.client(issued.key) as client:
        assert client.get("/v1/status", params={"task_id": "x"}).status_code == 404
        refused = client.post(
            "/v1/generate", json={"prompt": "a"}, headers={"Idempotency-Key": "k1"}
        )
        assert refused.status_code == 429
    assert count_rows(server.settings, IdempotencyRecord) == 0
