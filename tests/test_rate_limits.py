"""Per-account, per-minute limits: exact, counted on every /v1 request, with headers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from imagine.accounts import service as accounts
from imagine.api.ratelimit import LocalWindows
from imagine.db.database import Database
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


def test_limits_are_per_account_and_per_plan(server_factory: Any) -> None:
    server: RunningServer = server_factory(rate_limit_free=2, rate_limit_pro=4)
    free, pro = server.new_key("free"), server.new_key("pro")
    with server.client(free.key) as client:
        codes = [client.get("/v1/status", params={"task_id": "x"}).status_code for _ in range(3)]
    assert codes == [404, 404, 429]
    with server.client(pro.key) as client:
        codes = [client.get("/v1/status", params={"task_id": "x"}).status_code for _ in range(5)]
        assert client.get("/v1/status", params={"task_id": "x"}).headers["x-ratelimit-limit"] == "4"
    assert codes == [404, 404, 404, 404, 429]


def add_key(server: RunningServer, account_id: str, *, is_test: bool = False) -> str:
    """Another key of an existing account."""

    async def create(db: Database) -> str:
        async with db.write() as session:
            issued = await accounts.create_key(
                session, account_id, plan="free", credits=0, is_test=is_test
            )
        return issued.key

    return run_db(server.settings, create)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_keys_of_one_account_share_its_limit_exactly(server_factory: Any, store: str) -> None:
    """The limit is the plan's, and the plan is the account's: L requests across
    all of its keys, then 429 on every one of them. Its test keys have a window
    of their own, so test traffic cannot use up the live one."""
    redis_url = "redis://127.0.0.1:6379/0" if store == "redis" else None
    server: RunningServer = server_factory(rate_limit_free=4, redis_url=redis_url)
    issued = server.new_key("free")
    live = [issued.key, add_key(server, issued.account_id)]
    test = [add_key(server, issued.account_id, is_test=True) for _ in range(2)]

    def statuses(keys: list[str], count: int) -> list[tuple[int, str]]:
        answers = []
        for n in range(count):
            with server.client(keys[n % len(keys)]) as client:
                answer = client.get("/v1/status", params={"task_id": "task_nope"})
            answers.append((answer.status_code, answer.headers["x-ratelimit-remaining"]))
        return answers

    assert statuses(live, 6) == [
        (404, "3"),
        (404, "2"),
        (404, "1"),
        (404, "0"),
        (429, "0"),
        (429, "0"),
    ]
    assert statuses(test, 5) == [(404, "3"), (404, "2"), (404, "1"), (404, "0"), (429, "0")]
    with server.client(server.new_key("free").key) as other:  # another account: its own window
        assert other.get("/v1/status", params={"task_id": "x"}).status_code == 404


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


def test_local_windows_are_exact_moving_windows() -> None:
    """The in-process windows on a controlled clock: L requests in any 60 s, a
    refusal not counted, room again exactly when the oldest counted one is 60 s old."""
    clock = [1000.0]
    windows = LocalWindows(clock=lambda: clock[0])

    def hit() -> tuple[bool, int, float]:
        state = windows.hit("key", 3)
        return state.allowed, state.remaining, state.reset_time

    assert hit() == (True, 2, 1060.0)
    clock[0] = 1030.0
    assert hit() == (True, 1, 1060.0)
    assert hit() == (True, 0, 1060.0)
    assert hit() == (False, 0, 1060.0)  # refused, and not counted
    clock[0] = 1060.0
    assert hit() == (False, 0, 1060.0)  # the first request is exactly 60 s old: still counts
    clock[0] = 1060.001
    assert hit() == (True, 0, 1090.0)  # its slot is free; the two from 1030 remain
    clock[0] = 1090.5
    assert hit() == (True, 1, 1060.001 + 60)
    assert windows.hit("other", 3).remaining == 2  # per identity


def test_local_windows_forget_idle_identities() -> None:
    clock = [0.0]
    windows = LocalWindows(clock=lambda: clock[0])
    for n in range(LocalWindows.SWEEP_EVERY - 1):
        windows.hit(f"caller-{n}", 5)
    clock[0] = 61.0
    windows.hit("late", 5)  # this hit triggers the sweep
    assert windows.hit("caller-0", 5).remaining == 4  # counted afresh
    assert len(windows._hits) == 2
