"""Cancel, list, account, ledger, progress and test keys over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from imagine.accounts import service as accounts
from imagine.db.database import Database
from imagine.db.models import LedgerEntry
from imagine.errors import NotFound
from imagine.tasks import service as tasks

from conftest import RunningServer
from helpers import balance_and_ledger, run_db, wait_for_task

LONG = {"prompt": "long", "duration": 15, "resolution": "720p"}


def submit(client: httpx.Client, body: dict[str, Any] | None = None, **headers: str) -> str:
    answer = client.post(
        "/v1/generate", json=body or {"prompt": "p", "duration": 1}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["task_id"])


def ledger_kinds(server: RunningServer, task_id: str) -> list[str]:
    async def kinds(db: Database) -> list[str]:
        async with db.read() as session:
            rows = await session.scalars(
                select(LedgerEntry.kind).where(LedgerEntry.task_id == task_id)
            )
            return sorted(rows)

    return run_db(server.settings, kinds)


def wait_status(client: httpx.Client, task_id: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/v1/status", params={"task_id": task_id}).json()["data"]["status"] != wanted:
        assert time.monotonic() < deadline, f"{task_id} never became {wanted}"
        time.sleep(0.02)


def test_cancel_pending_refunds_at_once_and_finished_tasks_answer_409(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0)
    owner, stranger = server.new_key(credits=100), server.new_key()
    with server.client(owner.key) as client:
        task_id = submit(client)
        answer = client.post("/v1/cancel", json={"task_id": task_id})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        assert (data["status"], data["consumed_credits"]) == ("cancelled", 0)
        again = client.post("/v1/cancel", json={"task_id": task_id})
        assert again.status_code == 409
        assert again.json()["error"] == "TASK_FINISHED"
        assert client.post("/v1/cancel", json={}).status_code == 400
    with server.client(stranger.key) as client:
        assert client.post("/v1/cancel", json={"task_id": task_id}).status_code == 404
    assert ledger_kinds(server, task_id) == ["debit", "refund"]
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, owner.account_id))
    assert balance == total == 100


def test_task_history_lists_exactly_the_tasks_own_charges(server_factory: Any) -> None:
    """What the console's task page shows: a cancelled task's debit and refund,
    a pending one's debit, nothing of the account's other rows, and another
    account's task as not found."""
    server: RunningServer = server_factory(workers=0)
    owner, stranger = server.new_key(credits=100), server.new_key()
    with server.client(owner.key) as client:
        cancelled, pending = submit(client), submit(client)
        assert client.post("/v1/cancel", json={"task_id": cancelled}).status_code == 200

    def principal(issued: accounts.IssuedKey) -> accounts.Principal:
        return accounts.Principal(issued.account_id, issued.plan, issued.key_id)

    async def charges(db: Database, task_id: str) -> list[tuple[str, int]]:
        history = await tasks.task_history(db, principal(owner), task_id)
        return [(charge["kind"], charge["amount"]) for charge in history.charges]

    cost = server.settings.cost_for("preview")
    assert run_db(server.settings, lambda db: charges(db, cancelled)) == [
        ("debit", -cost),
        ("refund", cost),
    ]
    assert run_db(server.settings, lambda db: charges(db, pending)) == [("debit", -cost)]
    with pytest.raises(NotFound):
        run_db(server.settings, lambda db: tasks.task_history(db, principal(stranger), pending))


@pytest.mark.alone
def test_cancel_processing_stops_the_engine_and_refunds_once(server: RunningServer) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        task_id = submit(client, LONG)
        wait_status(client, task_id, "processing")
        asked = time.monotonic()
        answer = client.post("/v1/cancel", json={"task_id": task_id}).json()["data"]
        assert answer["status"] in ("processing", "cancelled")
        data = wait_for_task(client, task_id, timeout=10)
        stopped_after = time.monotonic() - asked
        assert data["status"] == "cancelled"
        assert data["consumed_credits"] == 0 and data["response"] == []
        assert client.post("/v1/cancel", json={"task_id": task_id}).status_code == 409
    assert stopped_after < 5
    assert ledger_kinds(server, task_id) == ["debit", "refund"]
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100


def test_cancel_racing_completion_charges_or_refunds_exactly_once(server: RunningServer) -> None:
    issued = server.new_key(credits=40 * 12)
    rng = random.Random(7)
    outcomes = []
    with server.client(issued.key) as client:
        for _ in range(12):
            task_id = submit(client, {"prompt": "race", "duration": 1, "ratio": "1:1"})
            time.sleep(rng.uniform(0, 0.4))
            answer = client.post("/v1/cancel", json={"task_id": task_id}).status_code
            data = wait_for_task(client, task_id)
            outcomes.append(data["status"])
            # linearizable: a cancel answered 200 wins; a 409 came after the completion
            assert (answer, data["status"]) in {(200, "cancelled"), (409, "completed")}
            expected = ["debit"] if data["status"] == "completed" else ["debit", "refund"]
            assert ledger_kinds(server, task_id) == expected
            assert data["consumed_credits"] == (40 if data["status"] == "completed" else 0)
    assert set(outcomes) <= {"completed", "cancelled"}
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 40 * 12 - 40 * outcomes.count("completed")


def test_listing_pages_stay_exact_while_tasks_are_inserted(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0, rate_limit_free=100_000)
    issued = server.new_key(credits=40 * 100_000)  # the inserter submits as fast as it can
    with server.client(issued.key) as client:
        existing = [submit(client) for _ in range(23)]
        stop = threading.Event()

        def keep_inserting() -> None:
            with server.client(issued.key) as other:
                while not stop.is_set():
                    submit(other)

        inserter = threading.Thread(target=keep_inserting)
        inserter.start()
        try:
            seen: list[str] = []
            after = None
            first_page = True
            while True:
                params: dict[str, Any] = {"limit": 5}
                if after:
                    params["after"] = after
                data = client.get("/v1/tasks", params=params).json()["data"]
                ids = [task["task_id"] for task in data["tasks"]]
                if first_page:
                    # Tasks inserted before the first page may lead it; ours follow.
                    ids = [i for i in ids if i in existing]
                    first_page = False
                seen.extend(ids)
                after = data["next_after"]
                time.sleep(0.02)
                if not data["has_more"]:
                    break
        finally:
            stop.set()
            inserter.join()
    assert seen == list(reversed(existing))


def test_listing_filters_and_validates(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    issued, other = server.new_key(), server.new_key()
    with server.client(issued.key) as client:
        kept, dropped = submit(client), submit(client)
        client.post("/v1/cancel", json={"task_id": dropped})
        pending = client.get("/v1/tasks", params={"status": "pending"}).json()["data"]
        assert [t["task_id"] for t in pending["tasks"]] == [kept]
        assert pending["tasks"][0]["request"]["prompt"] == "p"
        everything = client.get("/v1/tasks").json()["data"]
        assert [t["task_id"] for t in everything["tasks"]] == [dropped, kept]
        assert everything["has_more"] is False and everything["next_after"] is None
        assert client.get("/v1/tasks", params={"limit": 101}).status_code == 400
        assert client.get("/v1/tasks", params={"status": "lost"}).status_code == 400
        assert client.get("/v1/tasks", params={"after": "task_nope"}).status_code == 400
    with server.client(other.key) as client:
        assert client.get("/v1/tasks").json()["data"]["tasks"] == []
        assert client.get("/v1/tasks", params={"after": kept}).status_code == 400


def test_account_and_ledger_after_a_mixed_history(server: RunningServer, tmp_path: Any) -> None:
    issued = server.new_key(plan="pro", credits=200)
    with server.client(issued.key) as client:
        done = submit(client)
        failed = submit(client, {"prompt": "bad", "images": ["http://127.0.0.1:1/x.png"]})
        cancelled = submit(client, LONG)
        client.post("/v1/cancel", json={"task_id": cancelled})
        for task_id in (done, failed, cancelled):
            wait_for_task(client, task_id)

        answer = client.get("/v1/account")
        data = answer.json()["data"]
        assert data["account_id"] == issued.account_id
        assert (data["plan"], data["balance"]) == ("pro", 160)
        assert data["rate_limit"]["limit"] == 1000
        assert data["rate_limit"]["remaining"] == int(answer.headers["x-ratelimit-remaining"])
        for window in ("24h", "30d"):
            assert data["usage"][window]["credits_spent"] == 40
            tasks = data["usage"][window]["tasks"]
            assert (tasks["completed"], tasks["failed"], tasks["cancelled"]) == (1, 1, 1)

        first = client.get("/v1/account/ledger", params={"limit": 4}).json()["data"]
        rest = client.get(
            "/v1/account/ledger", params={"limit": 4, "after": first["next_after"]}
        ).json()["data"]
        for bad in ("0", "-5", str(2**80), "x"):  # the last id a client may send is 2**63 - 1
            answer = client.get("/v1/account/ledger", params={"after": bad})
            assert answer.status_code == 400, (bad, answer.text)
    entries = first["entries"] + rest["entries"]
    assert not rest["has_more"]
    assert [e["kind"] for e in entries][-1] == "grant"
    assert len(entries) == 1 + 3 + 2  # grant, three debits, two refunds
    assert entries[0]["balance_after"] == 160
    for newer, older in itertools.pairwise(entries):
        assert newer["id"] > older["id"]
        assert newer["balance_after"] == older["balance_after"] + newer["amount"]
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 160


def test_pending_tasks_report_their_place_in_the_queue(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    issued = server.new_key()
    with server.client(issued.key) as client:
        ids = [submit(client) for _ in range(3)]
        views = [client.get("/v1/status", params={"task_id": t}).json()["data"] for t in ids]
    assert [v["queue_position"] for v in views] == [1, 2, 3]
    assert all(v["eta_seconds"] is None for v in views)  # no finished task to learn from
    assert all(v["updated_at"].endswith("Z") for v in views)


def test_progress_only_grows_and_ends_at_100(server: RunningServer) -> None:
    issued = server.new_key(plan="pro")
    seen = []
    with server.client(issued.key) as client:
        task_id = submit(client, {"prompt": "watch", "duration": 15, "resolution": "720p"})
        while True:
            data = client.get("/v1/status", params={"task_id": task_id}).json()["data"]
            seen.append(data["progress"])
            if data["status"] == "completed":
                break
            time.sleep(0.05)
    assert seen == sorted(seen)
    assert seen[-1] == 100
    assert len(set(seen)) > 2  # intermediate values were reported


def new_test_key(server: RunningServer) -> accounts.IssuedKey:
    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(session, plan="free", credits=0, is_test=True)

    return run_db(server.settings, create)


@pytest.mark.parametrize(
    ("outcome", "status", "message"),
    [
        ("completed", "completed", None),
        ("moderation", "failed", "Inappropriate content, please try another prompt."),
        ("network", "failed", "Network error, please try again later."),
        ("file-type", "failed", "File type not supported"),
        ("build-failed", "failed", "grok imagine build failed"),
    ],
)
def test_test_keys_cost_nothing_and_force_outcomes(
    server: RunningServer, outcome: str, status: str, message: str | None
) -> None:
    test_key = new_test_key(server)
    live = server.new_key(credits=100)
    with server.client(test_key.key) as client:
        task_id = submit(client, None, **{"Imagine-Test-Outcome": outcome})
        data = wait_for_task(client, task_id)
        assert (data["status"], data["error_message"]) == (status, message)
        assert data["consumed_credits"] == 0 and data["test"] is True
        assert data["engine"] == "preview"
        listed = client.get("/v1/tasks").json()["data"]["tasks"]
        assert [t["task_id"] for t in listed] == [task_id]
        bad = client.post(
            "/v1/generate", json={"prompt": "x"}, headers={"Imagine-Test-Outcome": "explode"}
        )
        assert bad.status_code == 400
    with server.client(live.key) as client:
        refused = client.post(
            "/v1/generate", json={"prompt": "x"}, headers={"Imagine-Test-Outcome": "network"}
        )
        assert refused.status_code == 400
        assert client.get("/v1/tasks").json()["data"]["tasks"] == []
    assert run_db(server.settings, lambda db: balance_and_ledger(db, test_key.account_id)) == (0, 0)


def test_concurrent_cancels_refund_once(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    issued = server.new_key(credits=40)
    with server.client(issued.key) as client:
        task_id = submit(client)

    async def cancel_many() -> list[int]:
        headers = {"Authorization": f"Bearer {issued.key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/cancel", json={"task_id": task_id}) for _ in range(8))
            )
        return sorted(a.status_code for a in answers)

    assert asyncio.run(cancel_many()) == [200] + [409] * 7
    assert ledger_kinds(server, task_id) == ["debit", "refund"]
