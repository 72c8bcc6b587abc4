"""Strings that are not text (a lone surrogate, NUL) are refused at the edge, on
every endpoint and both submit paths, and a stored one never breaks a read.

Bodies are sent as raw bytes: JSON escapes (`\\ud800`, `\\u0000`) are how such
strings arrive, and an HTTP client would refuse to encode them otherwise.
"""

from __future__ import annotations

from typing import Any

import httpx

from imagine.db.database import Database
from imagine.db.models import Task
from imagine.ids import new_id, utcnow

from conftest import RunningServer
from helpers import assert_error, balance_and_ledger, count_rows, run_db

LONE_SURROGATE = "\\ud800"  # as spelled inside a JSON string
NUL = "\\u0000"
NOT_TEXT = (LONE_SURROGATE, NUL)
RULE = "must be valid Unicode text (no NUL characters or unpaired surrogates)"

GENERATE_FIELDS = (
    ('{"prompt": "aBADb"}', "prompt"),
    ('{"prompt": "x", "mode": "normalBAD"}', "mode"),
    ('{"prompt": "x", "ratio": "16:9BAD"}', "ratio"),
    ('{"prompt": "x", "resolution": "480pBAD"}', "resolution"),
    ('{"prompt": "x", "images": ["https://example.com/a.png", "https://e.com/BAD"]}', "images[1]"),
    ('{"prompt": "x", "images": "https://example.com/BAD.png"}', "images"),
    ('{"prompt": "x", "callback_url": "https://example.com/BAD"}', "callback_url"),
)


def post_json(client: httpx.Client, path: str, raw: str) -> httpx.Response:
    return client.post(path, content=raw.encode(), headers={"Content-Type": "application/json"})


def assert_not_text_refused(answer: httpx.Response, name: str) -> None:
    payload = assert_error(answer, 400, "INVALID_REQUEST")
    assert payload["message"] == f"Invalid request: The {name} parameter {RULE}", payload


def test_generate_refuses_strings_that_are_not_text_in_every_field_and_changes_nothing(
    server: RunningServer,
) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        for template, name in GENERATE_FIELDS:
            for bad in NOT_TEXT:
                # NUL passes orjson, so the fast path sees it; a lone surrogate
                # is refused by orjson and reaches the framework's route.
                answer = post_json(client, "/v1/generate", template.replace("BAD", bad))
                assert_not_text_refused(answer, name)
        header = client.post(
            "/v1/generate",
            json={"prompt": "x"},
            headers={b"Idempotency-Key": b"key-\x80"},  # Latin-1 0x80 is a control
        )
        assert_error(header, 400, "INVALID_REQUEST")
        assert "Idempotency-Key" in header.json()["message"]
    assert count_rows(server.settings, Task) == 0
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100


def test_every_endpoint_refuses_parameters_that_are_not_text(server: RunningServer) -> None:
    """Before, PostgreSQL answered 500 to a NUL in any parameter used in a query."""
    issued = server.new_key()
    with server.client(issued.key) as client:
        for bad in NOT_TEXT:
            answer = post_json(client, "/v1/cancel", '{"task_id": "task_BAD"}'.replace("BAD", bad))
            assert_not_text_refused(answer, "task_id")
        # Percent-decoding turns invalid UTF-8 into U+FFFD, never a surrogate:
        # only NUL can come through a query or a path.
        assert_not_text_refused(client.get("/v1/status?task_id=task_%00"), "task_id")
        assert_not_text_refused(client.get("/v1/tasks?after=task_%00"), "after")
        assert_not_text_refused(client.get("/v1/tasks/task_%00/deliveries"), "task_id")
        assert_error(client.get("/v1/status?task_id=task_%ED%A0%80"), 404, "NOT_FOUND")


async def _store_task_with_lone_surrogate(db: Database, account_id: str) -> str:
    """What a server without the `Text` rule accepted and stored."""
    task_id = new_id("task")
    now = utcnow()
    async with db.write() as session:
        session.add(
            Task(
                id=task_id,
                account_id=account_id,
                status="pending",
                request={"mode": "normal", "prompt": "a\ud800b", "ratio": "16:9", "images": []},
                cost=0,
                consumed_credits=0,
                engine="preview",
                error_message=None,
                outputs=[],
                max_attempts=1,
                created_at=now,
                updated_at=now,
                available_at=now,
            )
        )
    return task_id


def test_a_stored_lone_surrogate_never_makes_status_or_listing_fail(server_factory: Any) -> None:
    server = server_factory(workers=0)  # the task stays pending: status reads its queue place
    issued = server.new_key()
    task_id = run_db(
        server.settings, lambda db: _store_task_with_lone_surrogate(db, issued.account_id)
    )
    with server.client(issued.key) as client:
        fast = client.get("/v1/status", params={"task_id": task_id})
        listing = client.get("/v1/tasks")
        cancelled = client.post("/v1/cancel", json={"task_id": task_id})
    assert fast.status_code == 200, fast.text
    assert fast.json()["data"]["request"]["prompt"] == "a\ufffdb"
    assert listing.status_code == 200, listing.text
    assert [task["request"]["prompt"] for task in listing.json()["data"]["tasks"]] == ["a\ufffdb"]
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["data"]["status"] == "cancelled"
