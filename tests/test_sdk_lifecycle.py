"""The SDK's cancel, task list, account, ledger and webhook deliveries against a
real Imagine server on loopback (SQLite only: the SDK is a client)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from imagine.accounts import service as accounts
from imagine.client import (
    Account,
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    LedgerEntry,
    NotFound,
    Task,
    TaskFailed,
    TaskFinished,
    TaskPage,
    UnexpectedResponse,
)
from imagine.db.database import Database
from imagine.webhooks.sealing import SecretBox
from imagine.webhooks.service import create_secret

from conftest import RunningServer, make_settings, start_server
from helpers import run_db


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No workers: every task stays pending until it is cancelled."""
    running = start_server(make_settings(tmp_path_factory.mktemp("idle"), workers=0))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One worker: tasks run to the end."""
    running = start_server(make_settings(tmp_path_factory.mktemp("busy")))
    yield running
    running.stop()


class Recording(httpx.HTTPTransport):
    """A real transport that remembers each request's path and query."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.raw_path.decode()}")
        return super().handle_request(request)


# -- cancel --------------------------------------------------------------------


def test_cancel_pending_refunds_at_once_and_a_second_cancel_is_task_finished(
    idle: RunningServer,
) -> None:
    with Client(idle.new_key(credits=1000).key, idle.url) as sdk:
        task_id = sdk.generate("never runs", duration=1)
        pending = sdk.status(task_id)
        assert (pending.status, pending.consumed_credits) == ("pending", 40)
        assert pending.queue_position is not None and pending.queue_position >= 1
        assert pending.eta_seconds is None  # nothing ever finished on this server
        assert pending.cancel_requested is False and pending.test is False
        assert {"queue_position", "eta_seconds"} <= pending.to_dict().keys()
        assert sdk.account().balance == 960

        cancelled = sdk.cancel(task_id)
        assert (cancelled.status, cancelled.consumed_credits) == ("cancelled", 0)
        assert cancelled.failed and cancelled.finished and cancelled.queue_position is None
        assert cancelled.rate_limit is not None
        assert sdk.account().balance == 1000

        with pytest.raises(TaskFinished) as again:
            sdk.cancel(task_id)
        with pytest.raises(TaskFailed):
            sdk.wait(task_id, timeout=5)
        with pytest.raises(NotFound):
            sdk.cancel("task_nope")
        ledger = sdk.ledger()

    error = again.value
    assert isinstance(error, Conflict)
    assert (error.status, error.code, error.task_id) == (409, "TASK_FINISHED", task_id)
    assert "cancelled" in error.message
    assert [(e.kind, e.amount, e.balance_after, e.task_id) for e in ledger.entries] == [
        ("refund", 40, 1000, task_id),
        ("debit", -40, 960, task_id),
        ("grant", 1000, 1000, None),
    ]
    # What the SDK gives back as JSON is what the server said.
    with idle.client(idle.new_key().key) as http:
        other = http.post("/v1/generate", json={"prompt": "p", "duration": 1}).json()
        other_id = other["data"]["task_id"]
        raw = http.post("/v1/cancel", json={"task_id": other_id}).json()["data"]
    assert Task.from_data(raw).to_dict() == raw


def test_cancel_of_a_completed_task_is_task_finished_and_changes_nothing(
    busy: RunningServer,
) -> None:
    with Client(busy.new_key(credits=1000).key, busy.url) as sdk:
        done = sdk.run("finishes", ratio="1:1", duration=1, poll_interval=0.05)
        with pytest.raises(TaskFinished, match="completed") as finished:
            sdk.cancel(done.task_id)
        after = sdk.status(done.task_id)
        balance = sdk.account().balance
    assert finished.value.task_id == done.task_id
    assert (after.status, after.consumed_credits, after.response) == (
        "completed",
        40,
        done.response,
    )
    assert after.queue_position is None and "queue_position" not in after.to_dict()
    assert balance == 960


def test_cancel_of_a_processing_task_stops_it_and_wait_raises_task_failed(
    busy: RunningServer,
) -> None:
    with Client(busy.new_key(credits=1000).key, busy.url) as sdk:
        task_id = sdk.generate("long", duration=15, resolution="720p")
        deadline = time.monotonic() + 20
        while (running := sdk.status(task_id)).status != "processing":
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.02)
        assert running.queue_position == 0  # running, not queued
        asked = sdk.cancel(task_id)
        assert asked.status == "cancelled" or (asked.status, asked.cancel_requested) == (
            "processing",
            True,
        )
        with pytest.raises(TaskFailed) as stopped:
            sdk.wait(task_id, timeout=10, poll_interval=0.05)
        balance = sdk.account().balance
    assert (stopped.value.task.status, stopped.value.task.consumed_credits) == ("cancelled", 0)
    assert balance == 1000


def test_a_cancel_whose_answer_was_lost_is_retried(idle: RunningServer) -> None:
    """Cancel has no Idempotency-Key yet is retried: repeating it does no harm."""
    lost: list[str] = []

    class LoseFirstCancel(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path == "/v1/cancel" and not lost:
                response.read()  # the server did cancel it; the answer goes missing
                lost.append(request.url.path)
                raise httpx.ReadError("connection reset", request=request)
            return response

    with Client(idle.new_key().key, idle.url, transport=LoseFirstCancel()) as sdk:
        task_id = sdk.generate("lost answer", duration=1)
        with pytest.raises(TaskFinished):  # the retry finds the first attempt's work done
            sdk.cancel(task_id)
        assert lost and sdk.status(task_id).status == "cancelled"
        assert sdk.account().balance == 1000


# -- listing -------------------------------------------------------------------


def test_iter_tasks_follows_next_after_page_by_page(idle: RunningServer) -> None:
    transport = Recording()
    with Client(idle.new_key().key, idle.url, transport=transport) as sdk:
        made = [sdk.generate(f"task {n}", duration=1) for n in range(7)]
        sdk.cancel(made[2])
        transport.sent.clear()

        walk = sdk.iter_tasks(page_size=3)
        first_three = list(itertools.islice(walk, 3))
        assert len(transport.sent) == 1  # lazily: one page fetched for three tasks
        rest = list(walk)
        assert len(transport.sent) == 3  # 3 + 3 + 1
        assert [t.task_id for t in first_three + rest] == made[::-1]
        assert transport.sent[1].endswith(f"after={made[-3]}")

        page = sdk.tasks(limit=5)
        assert isinstance(page, TaskPage)
        assert [t.task_id for t in page.tasks] == made[:1:-1]
        assert page.has_more and page.next_after == made[2]
        last = sdk.tasks(limit=5, after=page.next_after)
        assert [t.task_id for t in last.tasks] == made[1::-1]
        assert not last.has_more and last.next_after is None

        assert [t.task_id for t in sdk.iter_tasks(status="cancelled")] == [made[2]]
        assert [t.task_id for t in sdk.tasks(status="pending", limit=100).tasks] == [
            t for t in made[::-1] if t != made[2]
        ]
        assert list(sdk.iter_tasks(status="completed")) == []
        bad_pages: list[dict[str, Any]] = [{"limit": 101}, {"status": "lost"}, {"after": "x"}]
        for bad in bad_pages:
            with pytest.raises(InvalidRequest):
                sdk.tasks(**bad)
        with pytest.raises(InvalidRequest):
            next(sdk.iter_tasks(page_size=0))


def test_a_list_that_never_moves_on_is_an_error_not_an_endless_loop() -> None:
    stuck = {
        "code": 200,
        "message": "success",
        "data": {"tasks": [], "has_more": True, "next_after": None},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=stuck))
    with Client("imk_x", transport=transport) as sdk, pytest.raises(UnexpectedResponse):
        list(sdk.iter_tasks())


# -- account and ledger ----------------------------------------------------------


def test_account_and_ledger_after_a_submit(idle: RunningServer) -> None:
    issued = idle.new_key(plan="pro", credits=500)
    with Client(issued.key, idle.url) as sdk:
        task_id = sdk.generate("one", duration=1)
        account = sdk.account()
        first = sdk.ledger(limit=1)
        second = sdk.ledger(limit=1, after=first.next_after)
    with idle.client(issued.key) as http:
        raw = http.get("/v1/account").json()["data"]

    assert isinstance(account, Account)
    assert (account.account_id, account.plan, account.balance) == (issued.account_id, "pro", 460)
    assert account.test is False
    assert set(account.usage) == {"24h", "30d"}
    for used in account.usage.values():
        assert used.credits_spent == 40
        assert used.tasks["pending"] == 1 and sum(used.tasks.values()) == 1
    assert account.rate_limit is not None and account.rate_limit.limit == 1000
    assert 0 <= account.rate_limit.remaining < 1000
    shown = account.to_dict()
    assert {k: v for k, v in shown.items() if k != "rate_limit"} == {
        k: v for k, v in raw.items() if k != "rate_limit"
    }
    assert shown["rate_limit"]["reset"] == raw["rate_limit"]["reset"]

    [debit], [grant] = first.entries, second.entries
    assert isinstance(debit, LedgerEntry)
    assert (debit.kind, debit.amount, debit.balance_after, debit.task_id) == (
        "debit",
        -40,
        460,
        task_id,
    )
    assert debit.created_at.tzinfo is not None
    assert first.has_more and first.next_after == debit.id
    assert (grant.kind, grant.amount, grant.balance_after, grant.task_id) == (
        "grant",
        500,
        500,
        None,
    )
    assert not second.has_more and second.next_after is None


def test_test_keys_are_marked_on_tasks_and_account(idle: RunningServer) -> None:
    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(session, plan="free", credits=0, is_test=True)

    issued = run_db(idle.settings, create)
    with Client(issued.key, idle.url) as sdk:
        task = sdk.status(sdk.generate("free of charge", duration=1))
        account = sdk.account()
        listed = sdk.tasks()
    assert task.test is True and task.to_dict()["test"] is True
    assert account.test is True and account.balance == 0
    assert [t.task_id for t in listed.tasks] == [task.task_id] and listed.tasks[0].test


# -- async ---------------------------------------------------------------------


@pytest.fixture
def idle_key(idle: RunningServer) -> str:
    """A fresh account's key, made outside any event loop (key creation runs its own)."""
    return idle.new_key(credits=1000).key


async def test_async_client_cancels_lists_and_reads_the_account(
    idle: RunningServer, idle_key: str
) -> None:
    async with AsyncClient(idle_key, idle.url) as sdk:
        made = [await sdk.generate(f"async {n}", duration=1) for n in range(3)]
        cancelled = await sdk.cancel(made[0])
        assert (cancelled.status, cancelled.consumed_credits) == ("cancelled", 0)
        with pytest.raises(TaskFinished) as again:
            await sdk.cancel(made[0])
        assert again.value.task_id == made[0]

        page = await sdk.tasks(limit=2)
        assert [t.task_id for t in page.tasks] == made[:0:-1] and page.has_more
        walked = [task.task_id async for task in sdk.iter_tasks(page_size=1)]
        assert walked == made[::-1]
        pending = [task.task_id async for task in sdk.iter_tasks(status="pending")]
        assert pending == made[:0:-1]

        account = await sdk.account()
        assert account.balance == 1000 - 2 * 40
        assert account.usage["24h"].tasks["cancelled"] == 1
        ledger = await sdk.ledger(limit=2)
        assert [e.kind for e in ledger.entries] == ["refund", "debit"] and ledger.has_more
        deliveries = await sdk.deliveries(made[0])
        assert (deliveries.task_id, deliveries.callback_url, deliveries.deliveries) == (
            made[0],
            None,
            [],
        )


# -- webhooks --------------------------------------------------------------------


def test_callback_url_is_sent_and_deliveries_show_each_attempt(busy: RunningServer) -> None:
    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{httpd.server_address[1]}/hooks/imagine"
    issued = busy.new_key()

    async def give_secret(db: Database) -> str:
        async with db.write() as session:
            box = SecretBox.for_settings(busy.settings)
            return await create_secret(session, issued.account_id, rotate=False, box=box)

    try:
        with Client(issued.key, busy.url) as sdk:
            with pytest.raises(InvalidRequest, match="signing secret"):
                sdk.generate("no secret yet", callback_url=hook)
            run_db(busy.settings, give_secret)
            task = sdk.run(
                "call me", callback_url=hook, ratio="1:1", duration=1, poll_interval=0.05
            )
            deadline = time.monotonic() + 10
            while (history := sdk.deliveries(task.task_id)).deliveries[0].status != "delivered":
                assert time.monotonic() < deadline, history
                time.sleep(0.05)
    finally:
        httpd.shutdown()
        httpd.server_close()

    assert history.task_id == task.task_id and history.callback_url == hook
    [delivery] = history.deliveries
    assert (delivery.type, delivery.attempt_count) == ("task.completed", 1)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    [attempt] = delivery.attempts
    assert (attempt.status_code, attempt.error) == (200, None) and attempt.duration_ms >= 0
    assert [r["data"]["task_id"] for r in received] == [task.task_id]
