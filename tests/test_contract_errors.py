"""Every row of the contract's error table, and every validation rule, over real HTTP.

Each refusal must leave balances, tasks and ledgers exactly as they were.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from imagine.accounts.keys import generate_key
from imagine.accounts.service import KeyCache, revoke_key
from imagine.db.database import Database
from imagine.db.models import Task

from conftest import RunningServer
from helpers import assert_error, balance_and_ledger, count_rows, run_db


def count_tasks(server: RunningServer) -> int:
    return count_rows(server.settings, Task)


def test_missing_bearer_is_401_with_challenge(server: RunningServer) -> None:
    with server.client() as client:
        answer = client.post("/v1/generate", json={"prompt": "x"})
        assert_error(answer, 401, "UNAUTHORIZED")
        assert answer.headers["www-authenticate"] == "Bearer"
        assert "x-ratelimit-limit" not in answer.headers


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer imk_" + "a" * 38,  # right shape, wrong checksum
    ],
)
def test_malformed_keys_are_401(server: RunningServer, header: str) -> None:
    with server.client() as client:
        answer = client.get(
            "/v1/status", params={"task_id": "x"}, headers={"Authorization": header}
        )
        assert_error(answer, 401, "UNAUTHORIZED")


async def _revoke_in(db: Database, key_id: str) -> None:
    async with db.write() as session:
        assert await revoke_key(session, key_id)


def _revoke(server: RunningServer, key_id: str) -> None:
    run_db(server.settings, lambda db: _revoke_in(db, key_id))


def test_unknown_and_revoked_keys_are_401(server_factory: Any) -> None:
    server = server_factory(key_cache_seconds=0)
    issued = server.new_key()
    with server.client(generate_key()) as stranger:
        assert_error(stranger.get("/v1/status", params={"task_id": "x"}), 401, "UNAUTHORIZED")
    with server.client(issued.key) as client:
        assert_error(client.get("/v1/status", params={"task_id": "x"}), 404, "NOT_FOUND")
        _revoke(server, issued.key_id)
        assert_error(client.get("/v1/status", params={"task_id": "x"}), 401, "UNAUTHORIZED")


def test_a_revoked_key_stops_working_within_the_key_cache_time(server_factory: Any) -> None:
    server = server_factory(key_cache_seconds=1)
    issued = server.new_key()
    with server.client(issued.key) as client:
        assert_error(client.get("/v1/status", params={"task_id": "x"}), 404, "NOT_FOUND")
        _revoke(server, issued.key_id)
        time.sleep(1.05)
        assert_error(client.get("/v1/status", params={"task_id": "x"}), 401, "UNAUTHORIZED")
        # An unknown key is never remembered: refused at once, every time.
        with server.client(generate_key()) as stranger:
            for _ in range(3):
                answer = stranger.get("/v1/status", params={"task_id": "x"})
                assert_error(answer, 401, "UNAUTHORIZED")


def test_key_cache_bounds_revocation_by_its_ttl(server: RunningServer) -> None:
    """The cache's rule on a controlled clock: remembered below the TTL, looked up again at it."""
    issued = server.new_key()
    clock = [1000.0]

    async def scenario(db: Database) -> list[bool]:
        cache = KeyCache(db, ttl=5, clock=lambda: clock[0])
        seen = [await cache.authenticate(issued.key) is not None]
        await _revoke_in(db, issued.key_id)
        clock[0] += 4.9
        seen.append(await cache.authenticate(issued.key) is not None)
        clock[0] += 0.1
        seen.append(await cache.authenticate(issued.key) is not None)
        return seen

    assert run_db(server.settings, scenario) == [True, True, False]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "The prompt parameter is required"),
        ({"prompt": "   "}, "The prompt parameter is required"),
        ({"prompt": "x" * 5001}, "at most 5000 characters"),
        ({"prompt": 5}, "prompt parameter must be a string"),
        ({"prompt": "x", "mode": "weird"}, "mode parameter must be one of"),
        ({"prompt": "x", "ratio": "5:4"}, "ratio parameter must be one of"),
        ({"prompt": "x", "resolution": "1080p"}, "resolution parameter must be one of"),
        ({"prompt": "x", "duration": 0}, "duration parameter must be an integer from 1 to 15"),
        ({"prompt": "x", "duration": 16}, "duration parameter must be an integer from 1 to 15"),
        ({"prompt": "x", "duration": "6"}, "duration parameter must be an integer"),
        ({"prompt": "x", "duration": 6.5}, "duration parameter must be an integer"),
        ({"prompt": "x", "duration": True}, "duration parameter must be an integer"),
        ({"prompt": "x", "seed": -1}, "seed parameter must be an integer from 0"),
        ({"prompt": "x", "seed": 2**40}, "seed parameter must be an integer from 0"),
        ({"prompt": "x", "images": ["https://example.com/a.png"] * 8}, "at most 7 images"),
        ({"prompt": "x", "images": ["ftp://example.com/a.png"]}, "images[0]"),
        ({"prompt": "x", "images": ["data:text/plain;base64,aGk="]}, "images[0]"),
        ({"prompt": "x", "images": ["data:image/png;base64,@@@"]}, "not valid base64"),
        ({"prompt": "x", "images": [5]}, "images"),
        ({"prompt": "x", "colour": "red"}, "Unknown parameter: colour"),
    ],
)
def test_invalid_generate_bodies_are_400_and_change_nothing(
    server: RunningServer, body: dict[str, Any], fragment: str
) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json=body)
    payload = assert_error(answer, 400, "INVALID_REQUEST")
    assert payload["message"].startswith("Invalid request: ")
    assert fragment in payload["message"]
    assert count_tasks(server) == 0
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"prompt"', b"", b"null", b"\xff\xfe"],
)
def test_non_object_bodies_are_400(server: RunningServer, raw: bytes) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        answer = client.post(
            "/v1/generate", content=raw, headers={"Content-Type": "application/json"}
        )
    assert_error(answer, 400, "INVALID_REQUEST")
    assert count_tasks(server) == 0


def test_status_without_task_id_is_400(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        body = assert_error(client.get("/v1/status"), 400, "INVALID_REQUEST")
    assert "task_id" in body["message"]


def test_unknown_task_and_other_accounts_task_look_the_same(server: RunningServer) -> None:
    owner, other = server.new_key(), server.new_key()
    with server.client(owner.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "mine", "duration": 1}).json()[
            "data"
        ]["task_id"]
        assert client.get("/v1/status", params={"task_id": task_id}).status_code == 200
    with server.client(other.key) as client:
        foreign = client.get("/v1/status", params={"task_id": task_id})
        missing = client.get("/v1/status", params={"task_id": "task_doesnotexist"})
    assert_error(foreign, 404, "NOT_FOUND")
    assert_error(missing, 404, "NOT_FOUND")
    assert foreign.json() == missing.json()


def test_insufficient_credits_is_402_and_changes_nothing(server: RunningServer) -> None:
    issued = server.new_key(credits=39)
    with server.client(issued.key) as client:
        assert_error(client.post("/v1/generate", json={"prompt": "x"}), 402, "INSUFFICIENT_CREDITS")
    assert count_tasks(server) == 0
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 39


def test_oversized_body_is_413(server_factory: Any) -> None:
    server = server_factory(max_body_bytes=4096)
    issued = server.new_key()
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "x" * 5000})
        assert_error(answer, 413, "PAYLOAD_TOO_LARGE")
        assert "x-ratelimit-remaining" in answer.headers

        def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 1000

        streamed = client.post("/v1/generate", content=chunks())
        assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert count_tasks(server) == 0


def test_unknown_paths_and_methods_get_the_envelope(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        missing = client.get("/v1/nothing-here")
        assert_error(missing, 404, "NOT_FOUND")
        assert missing.headers["x-ratelimit-limit"] == "100"
        assert_error(client.get("/v1/generate"), 405, "METHOD_NOT_ALLOWED")
    with server.client() as client:
        assert_error(client.get("/elsewhere"), 404, "NOT_FOUND")


def test_unexpected_errors_are_500_envelopes_without_internals(server_factory: Any) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals: SELECT * FROM accounts")

    server = server_factory(configure_app=lambda app: app.add_api_route("/v1/boom", boom))
    issued = server.new_key()
    with server.client(issued.key) as client:
        answer = client.get("/v1/boom")
    body = assert_error(answer, 500, "INTERNAL_ERROR")
    assert "request id" in body["message"]
    assert "secret" not in answer.text
    assert "x-ratelimit-limit" in answer.headers


def test_openapi_docs_and_health(server: RunningServer) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json")
        assert spec.status_code == 200
        assert "/v1/generate" in spec.json()["paths"]
        assert client.get("/docs").status_code == 200
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["data"]["status"] == "ok"


def test_concurrent_submits_never_overdraw(server: RunningServer) -> None:
    """Credits for 5 tasks, 20 simultaneous submits: exactly 5 accepted, 15 get 402."""
    issued = server.new_key(credits=5 * 40 + 39)

    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {issued.key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post("/v1/generate", json={"prompt": f"n{i}", "duration": 1})
                    for i in range(20)
                )
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(fire())
    assert statuses.count(200) == 5
    assert statuses.count(402) == 15
    assert count_tasks(server) == 5
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 39
