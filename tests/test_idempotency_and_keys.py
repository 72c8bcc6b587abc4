"""Idempotent submits (one task, one charge) and how keys are kept."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select

from imagine.accounts.keys import hash_key, is_well_formed
from imagine.db.database import Database
from imagine.db.models import ApiKey

from conftest import RunningServer
from helpers import balance_and_ledger, run_db


def test_same_key_same_body_returns_the_same_task_once_charged(server: RunningServer) -> None:
    issued = server.new_key(credits=200)
    body = {"prompt": "once", "duration": 1}
    with server.client(issued.key) as client:
        first = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "abc"})
        again = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "abc"})
        other = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "def"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json() == again.json()
    assert other.json()["data"]["task_id"] != first.json()["data"]["task_id"]
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 200 - 2 * 40


def test_same_key_different_body_is_409_and_changes_nothing(server: RunningServer) -> None:
    issued = server.new_key(credits=200)
    with server.client(issued.key) as client:
        first = client.post(
            "/v1/generate", json={"prompt": "one"}, headers={"Idempotency-Key": "k"}
        )
        assert first.status_code == 200
        clash = client.post(
            "/v1/generate", json={"prompt": "two"}, headers={"Idempotency-Key": "k"}
        )
    assert clash.status_code == 409
    assert clash.json()["error"] == "IDEMPOTENCY_CONFLICT"
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 160


def test_idempotency_keys_are_scoped_per_account(server: RunningServer) -> None:
    alice, bob = server.new_key(), server.new_key()
    answers = []
    for issued in (alice, bob):
        with server.client(issued.key) as client:
            answers.append(
                client.post(
                    "/v1/generate", json={"prompt": "same"}, headers={"Idempotency-Key": "shared"}
                ).json()["data"]["task_id"]
            )
    assert answers[0] != answers[1]


def test_concurrent_duplicates_create_one_task(server: RunningServer) -> None:
    issued = server.new_key(credits=1000)

    async def fire() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {issued.key}", "Idempotency-Key": "dup"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/generate", json={"prompt": "dup"}) for _ in range(10))
            )

    answers = asyncio.run(fire())
    ids = {a.json()["data"]["task_id"] for a in answers if a.status_code == 200}
    assert len(ids) == 1
    assert all(a.status_code in (200, 409) for a in answers)
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 960


def test_invalid_idempotency_key_is_400(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        answer = client.post(
            "/v1/generate", json={"prompt": "x"}, headers={"Idempotency-Key": "k" * 300}
        )
    assert answer.status_code == 400


def test_database_holds_the_hash_never_the_key(server: RunningServer) -> None:
    issued = server.new_key()
    assert is_well_formed(issued.key) and issued.key.startswith("imk_")

    async def stored(db: Database) -> list[tuple[str, ...]]:
        async with db.read() as session:
            rows = await session.execute(select(ApiKey.key_hash, ApiKey.display, ApiKey.name))
            return [tuple(row) for row in rows]

    rows = run_db(server.settings, stored)
    assert rows == [(hash_key(issued.key), rows[0][1], "")]
    assert issued.key not in rows[0][1] and rows[0][1].endswith(issued.key[-4:])
    if server.settings.resolved_database_url.startswith("sqlite"):
        for path in server.settings.data_dir.parent.glob("**/imagine.db*"):
            assert issued.key.encode() not in path.read_bytes()
