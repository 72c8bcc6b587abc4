"""Signed webhooks over real HTTP: a server on loopback, receivers of our own that
verify every delivery with the `standardwebhooks` package, and real processes
killed with SIGKILL."""

from __future__ import annotations

import base64
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest
import standardwebhooks.webhooks
from sqlalchemy import update
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from imagine.accounts import service as accounts
from imagine.cli.main import app as cli_app
from imagine.db.database import Database
from imagine.db.models import Account, WebhookEvent
from imagine.media.netguard import IPAddress
from imagine.storage import create_storage
from imagine.webhooks import repository
from imagine.webhooks.dispatcher import Dispatcher
from imagine.webhooks.sealing import SecretBox
from imagine.webhooks.service import create_secret
from imagine.webhooks.signing import new_secret, signature

from conftest import RunningServer, make_settings
from helpers import run_db, wait_for_task
from loopback_doubles import CountingListener
from processes import ImagineProcess, ServeProcess, free_port

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
FAST_RETRIES = "0.2,0.2,0.2,0.2"
LONG = {"prompt": "long", "duration": 15, "resolution": "720p"}
SHARED_SECRET_KEY = "a-server-secret-every-process-is-given"


# -- a receiver of our own -----------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A webhook endpoint on loopback. Every request is verified with the
    `standardwebhooks` verifier; one that does not verify is kept in `forged`
    and answered 400. Paths choose the behaviour: `/ok` 200, `/flaky` 503 twice
    then 200, `/gone` 410, `/moved` 302 to `/elsewhere`, `/hang` no answer until
    the receiver stops."""

    def __init__(self, secret: str, port: int = 0) -> None:
        self.verifier = Webhook(secret)
        self.received: list[Received] = []
        self.arrivals: list[tuple[str, float]] = []  # every request, verified or not
        self.forged: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers = receiver.handle(self.path, dict(self.headers.items()), body)
                if status == 0:
                    receiver.release.wait(30)
                    status = 200
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.port = int(self.httpd.server_address[1])

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        now = time.monotonic()
        with self._lock:
            self.arrivals.append((path, now))
            earlier = sum(1 for p, _ in self.arrivals if p == path) - 1
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            self.forged.append(f"{path}: {exc}")
            return 400, {}
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.received.append(Received(path, lowered, body, payload, now))
        if path == "/flaky" and earlier < 2:
            return 503, {}
        if path == "/gone":
            return 410, {}
        if path == "/moved":
            return 302, {"Location": "/elsewhere"}
        if path == "/hang":
            return 0, {}
        return 200, {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(found := self.at(path)) < count:
            assert time.monotonic() < deadline, f"{path}: {len(found)} of {count} deliveries"
            time.sleep(0.02)
        return found

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# -- helpers ---------------------------------------------------------------------


def give_secret(server: RunningServer, account_id: str) -> str:
    async def action(db: Database) -> str:
        async with db.write() as session:
            box = SecretBox.for_settings(server.settings)
            return await create_secret(session, account_id, rotate=False, box=box)

    return run_db(server.settings, action)


def account_with_secret(
    server: RunningServer, *, test: bool = False
) -> tuple[accounts.IssuedKey, str]:
    async def create(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(
                session, plan="pro", credits=0 if test else 1000, is_test=test
            )

    issued = run_db(server.settings, create)
    return issued, give_secret(server, issued.account_id)


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    answer = client.post("/v1/generate", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"]["task_id"])


def deliveries(client: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    answer = client.get(f"/v1/tasks/{task_id}/deliveries")
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["task_id"] == task_id
    return list(data["deliveries"])


def wait_for_delivery_status(
    client: httpx.Client, task_id: str, wanted: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(client, task_id)
        if found and found[0]["status"] == wanted:
            return found[0]
        assert time.monotonic() < deadline, f"deliveries of {task_id}: {found}"
        time.sleep(0.05)


# -- signatures ------------------------------------------------------------------------


def test_the_specs_test_vector_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example of the Standard Webhooks specification, signed by us and verified
    by the package's verifier at the moment the example was made."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signature(secret, msg_id, timestamp, body) == expected

    class Then(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Self:
            return cls.fromtimestamp(timestamp + 10, UTC)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", Then)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": expected,
    }
    assert Webhook(secret).verify(body, headers) == {"test": 2432232314}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


# -- delivery ----------------------------------------------------------------------------


def test_completed_failed_and_cancelled_tasks_each_deliver_a_verified_event(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory()
    live, live_secret = account_with_secret(server)
    tester, test_secret = account_with_secret(server, test=True)
    stranger = server.new_key()
    with Receiver(live_secret) as live_hooks, Receiver(test_secret) as test_hooks:
        with server.client(live.key) as client:
            done = submit(
                client, {"prompt": "p", "duration": 1, "callback_url": live_hooks.url("/ok")}
            )
            cancelled = submit(client, {**LONG, "callback_url": live_hooks.url("/ok")})
            assert client.post("/v1/cancel", json={"task_id": cancelled}).status_code == 200
            statuses = {t: wait_for_task(client, t) for t in (done, cancelled)}
        with server.client(tester.key) as client:
            failed = submit(
                client,
                {"prompt": "p", "duration": 1, "callback_url": test_hooks.url("/ok")},
                **{"Imagine-Test-Outcome": "network"},
            )
            statuses[failed] = wait_for_task(client, failed)
        received = {r.payload["data"]["task_id"]: r for r in live_hooks.wait_for("/ok", 2)}
        received.update({r.payload["data"]["task_id"]: r for r in test_hooks.wait_for("/ok")})
        assert live_hooks.forged == test_hooks.forged == []

    expected_types = {done: "task.completed", cancelled: "task.cancelled", failed: "task.failed"}
    assert {t: r.payload["type"] for t, r in received.items()} == expected_types
    for task_id, delivery in received.items():
        data, status = delivery.payload["data"], statuses[task_id]
        # File links are signed for the server's configured address, not the poller's.
        assert len(data.pop("response")) == len(status.pop("response"))
        assert data == status
        assert delivery.webhook_id.startswith("msg_")
        assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.payload["timestamp"].endswith("Z")
    assert statuses[failed]["error_message"] == "Network error, please try again later."

    with server.client(live.key) as client:
        listed = wait_for_delivery_status(client, done, "delivered")
        assert listed["webhook_id"] == received[done].webhook_id
        assert listed["type"] == "task.completed" and listed["attempt_count"] == 1
        assert [a["status_code"] for a in listed["attempts"]] == [200]
        assert listed["delivered_at"] and listed["next_attempt_at"] is None
        assert client.get(f"/v1/tasks/{failed}/deliveries").status_code == 404
    with server.client(stranger.key) as client:
        missing = client.get(f"/v1/tasks/{done}/deliveries")
        assert missing.status_code == 404 and missing.json()["error"] == "NOT_FOUND"
    with server.client(stranger.key) as client:
        plain = submit(client, {"prompt": "no hook", "duration": 1})
        assert deliveries(client, plain) == []


@SQLITE_ONLY
def test_signing_secrets_are_stored_encrypted_and_plain_ones_from_before_still_sign(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory()
    sealed, secret = account_with_secret(server)
    older = server.new_key(plan="pro")
    plain = new_secret()

    async def store_plain(db: Database) -> None:  # as a version without sealing did
        async with db.write() as session:
            await session.execute(
                update(Account).where(Account.id == older.account_id).values(webhook_secret=plain)
            )

    run_db(server.settings, store_plain)
    stored = b"".join(path.read_bytes() for path in server.settings.data_dir.glob("imagine.db*"))
    body = secret.removeprefix("whsec_")
    for form in (secret.encode(), body.encode(), base64.b64decode(body)):
        assert form not in stored
    assert plain.encode() in stored  # the test would prove nothing if the file hid it anyway

    with Receiver(secret) as hooks, Receiver(plain) as older_hooks:
        for issued, receiver in ((sealed, hooks), (older, older_hooks)):
            with server.client(issued.key) as client:
                submit(client, {"prompt": "p", "duration": 1, "callback_url": receiver.url("/ok")})
        hooks.wait_for("/ok")
        older_hooks.wait_for("/ok")
        assert hooks.forged == older_hooks.forged == []


def test_submit_with_callback_needs_a_signing_secret(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    issued = server.new_key()
    with server.client(issued.key) as client:
        refused = client.post(
            "/v1/generate", json={"prompt": "p", "callback_url": "http://127.0.0.1:9/hook"}
        )
        assert refused.status_code == 400
        assert refused.json()["error"] == "INVALID_REQUEST"
        assert f"imagine webhooks secret {issued.account_id}" in refused.json()["message"]
        assert client.get("/v1/tasks").json()["data"]["tasks"] == []
        give_secret(server, issued.account_id)
        submit(client, {"prompt": "p", "callback_url": "http://127.0.0.1:9/hook"})


@SQLITE_ONLY
def test_receiver_down_for_its_first_attempts_gets_the_same_event_later(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(webhook_retry_delays=FAST_RETRIES)
    issued, secret = account_with_secret(server)
    with Receiver(secret) as hooks, server.client(issued.key) as client:
        task_id = submit(
            client, {"prompt": "p", "duration": 1, "callback_url": hooks.url("/flaky")}
        )
        tries = hooks.wait_for("/flaky", 3)
        listed = wait_for_delivery_status(client, task_id, "delivered")
        assert hooks.forged == []
    assert len({r.webhook_id for r in tries}) == 1
    assert tries[0].body == tries[2].body  # the same message, signed again at each try
    assert [a["status_code"] for a in listed["attempts"]] == [503, 503, 200]
    assert listed["attempt_count"] == 3 and listed["webhook_id"] == tries[0].webhook_id


@pytest.mark.alone
@SQLITE_ONLY
def test_a_hanging_receiver_does_not_delay_other_deliveries(server_factory: Any) -> None:
    # One worker: it goes on to the next task while the first delivery hangs.
    server: RunningServer = server_factory(webhook_timeout_seconds=8, shutdown_grace_seconds=1)
    issued, secret = account_with_secret(server)
    with Receiver(secret) as hooks, server.client(issued.key) as client:
        stuck = submit(client, {"prompt": "p", "duration": 1, "callback_url": hooks.url("/hang")})
        hooks.wait_for("/hang")
        other = submit(client, {"prompt": "p", "duration": 1, "callback_url": hooks.url("/ok")})
        wait_for_task(client, other)
        ended = time.monotonic()
        arrived = hooks.wait_for("/ok", timeout=5)[0].at
        assert deliveries(client, stuck)[0]["status"] == "delivering"
    assert arrived - ended < 2.0  # the hanging one holds its slot for up to 8 s


@SQLITE_ONLY
def test_a_4xx_stops_at_once_and_a_redirect_is_never_followed(server_factory: Any) -> None:
    server: RunningServer = server_factory(webhook_retry_delays="0.2")
    issued, secret = account_with_secret(server)
    with Receiver(secret) as hooks, server.client(issued.key) as client:
        gone = submit(client, {"prompt": "p", "duration": 1, "callback_url": hooks.url("/gone")})
        moved = submit(client, {"prompt": "p", "duration": 1, "callback_url": hooks.url("/moved")})
        gone_listed = wait_for_delivery_status(client, gone, "failed")
        moved_listed = wait_for_delivery_status(client, moved, "failed")
        time.sleep(0.5)  # longer than the retry delay: nothing else arrives
        assert [p for p, _ in hooks.arrivals].count("/gone") == 1
        assert "/elsewhere" not in [p for p, _ in hooks.arrivals]
        assert hooks.forged == []
    assert [a["status_code"] for a in gone_listed["attempts"]] == [410]
    # 3xx is a failure worth retrying (the receiver may be fixed), never a hop.
    assert [a["status_code"] for a in moved_listed["attempts"]] == [302, 302]
    assert moved_listed["attempts"][0]["error"] == "redirect not followed"


@SQLITE_ONLY
def test_forbidden_callbacks_are_refused_at_submit_and_at_delivery(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A name is only resolved when delivering. One that resolves inside the
    server's network is never contacted, and the account learns no more than
    from a name that does not resolve at all: the delivery log is no oracle
    for the server's DNS. The operator's log has the details."""
    server: RunningServer = server_factory(workers=0, allow_private_urls=False)
    issued, _ = account_with_secret(server)
    listener = CountingListener()
    try:
        with server.client(issued.key) as client:
            for url in (
                f"http://127.0.0.1:{listener.port}/hook",
                f"http://localhost:{listener.port}/hook",
                "http://[::1]/hook",
                "http://169.254.169.254/latest",
                "ftp://example.com/hook",
            ):
                refused = client.post("/v1/generate", json={"prompt": "p", "callback_url": url})
                assert refused.status_code == 400, url
                assert "callback_url" in refused.json()["message"]
            inside, unknown = (
                submit(client, {"prompt": "p", "callback_url": f"http://{host}:{listener.port}/"})
                for host in ("inside.example.test", "unknown.example.test")
            )
            for task_id in (inside, unknown):
                client.post("/v1/cancel", json={"task_id": task_id})

            async def resolver(host: str, port: int) -> list[IPAddress]:
                if host == "inside.example.test":
                    return [IPv4Address("127.0.0.1")]
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

            async def deliver(db: Database) -> None:
                dispatcher = Dispatcher(
                    db, create_storage(server.settings), server.settings, resolver=resolver
                )
                for event in await repository.claim_due(db, 10, 30):
                    await dispatcher.deliver(event)

            with caplog.at_level(logging.WARNING, logger="imagine.webhooks"):
                run_db(server.settings, deliver)
            answers = [client.get(f"/v1/tasks/{task}/deliveries") for task in (inside, unknown)]
    finally:
        listener.close()
    assert listener.connections == 0
    seen = []
    for answer in answers:
        assert answer.status_code == 200
        assert "127.0.0.1" not in answer.text and "resolv" not in answer.text
        (listed,) = answer.json()["data"]["deliveries"]
        seen.append((listed["status"], listed["attempt_count"], listed["attempts"][0]["error"]))
    assert seen == [("pending", 1, "connection failed")] * 2
    assert "'inside.example.test' resolves to forbidden address(es) ['127.0.0.1']" in caplog.text
    assert "Name or service not known" in caplog.text


@SQLITE_ONLY
def test_an_event_whose_delivery_lease_expired_is_delivered_again(server_factory: Any) -> None:
    """A process that died mid-delivery leaves its event `delivering`; once the
    lease runs out another dispatcher takes it."""
    # Processes that share a database but not a data dir share the server secret.
    api_only: RunningServer = server_factory(workers=0, secret_key=SHARED_SECRET_KEY)
    issued, secret = account_with_secret(api_only)
    with Receiver(secret) as hooks:
        with api_only.client(issued.key) as client:
            task_id = submit(client, {"prompt": "p", "callback_url": hooks.url("/ok")})
            client.post("/v1/cancel", json={"task_id": task_id})

        async def die_mid_delivery(db: Database) -> None:
            async with db.write() as session:
                await session.execute(
                    update(WebhookEvent)
                    .where(WebhookEvent.task_id == task_id)
                    .values(
                        status="delivering",
                        attempts=1,
                        lease_expires_at=datetime.now(UTC) - timedelta(seconds=1),
                    )
                )

        run_db(api_only.settings, die_mid_delivery)
        time.sleep(0.3)
        assert hooks.received == []  # an API-only process does not deliver
        server_factory(
            workers=1,
            database_url=api_only.settings.resolved_database_url,
            secret_key=SHARED_SECRET_KEY,
        )
        hooks.wait_for("/ok")
        with api_only.client(issued.key) as client:
            listed = wait_for_delivery_status(client, task_id, "delivered")
    assert listed["attempt_count"] == 2
    assert [a["status_code"] for a in listed["attempts"]] == [200]


def test_sigkill_before_delivery_then_restart_delivers(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    data_dir = tmp_path / "data"
    # Retries far enough apart that the kill lands between attempts, not during one
    # (one that was in flight would wait for its lease, 2 * timeout + 10 s).
    env = {
        "IMAGINE_ALLOW_PRIVATE_URLS": "true",
        "IMAGINE_WEBHOOK_RETRY_DELAYS": ",".join(["2"] * 20),
        "IMAGINE_WEBHOOK_TIMEOUT_SECONDS": "2",
    }
    port = free_port()  # nothing listens there yet: the receiver is down
    first = ServeProcess(data_dir, env=env)
    processes.append(first)

    async def account(db: Database) -> tuple[accounts.IssuedKey, str]:
        async with db.write() as session:
            issued = await accounts.create_account(session, plan="pro", credits=100)
            box = SecretBox.for_settings(make_settings(data_dir))
            return issued, await create_secret(session, issued.account_id, rotate=False, box=box)

    issued, secret = run_db(make_settings(data_dir), account)
    headers = {"Authorization": f"Bearer {issued.key}"}
    with httpx.Client(base_url=first.url, headers=headers) as client:
        task_id = submit(
            client, {"prompt": "p", "duration": 1, "callback_url": f"http://127.0.0.1:{port}/ok"}
        )
        assert wait_for_task(client, task_id)["status"] == "completed"
        deadline = time.monotonic() + 20
        while not (tried := deliveries(client, task_id)) or not tried[0]["attempts"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    first.kill()
    assert tried[0]["attempts"][0]["error"] == "connection failed"

    with Receiver(secret, port=port) as hooks:
        second = ServeProcess(data_dir, env=env)
        processes.append(second)
        delivered = hooks.wait_for("/ok")[0]
        with httpx.Client(base_url=second.url, headers=headers) as client:
            listed = wait_for_delivery_status(client, task_id, "delivered")
        assert hooks.forged == []
    assert delivered.webhook_id == tried[0]["webhook_id"] == listed["webhook_id"]
    assert delivered.payload["data"]["status"] == "completed"
    assert listed["attempts"][-1]["status_code"] == 200


# -- the operator's command ----------------------------------------------------------------


@SQLITE_ONLY
def test_secret_command_shows_a_secret_once_and_rotates_only_when_asked(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0)
    issued = server.new_key()
    data_dir = ["--data-dir", str(server.settings.data_dir)]
    env = {"IMAGINE_DATABASE_URL": server.settings.resolved_database_url}
    runner = CliRunner()

    first = runner.invoke(cli_app, ["webhooks", "secret", issued.account_id, *data_dir], env=env)
    assert first.exit_code == 0, first.output
    secret = first.output.strip().splitlines()[-1]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)

    again = runner.invoke(cli_app, ["webhooks", "secret", issued.account_id, *data_dir], env=env)
    assert again.exit_code == 1
    assert "--rotate" in again.output and secret not in again.output

    rotated = runner.invoke(
        cli_app, ["webhooks", "secret", issued.account_id, "--rotate", *data_dir], env=env
    )
    assert rotated.exit_code == 0, rotated.output
    new = rotated.output.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != secret

    unknown = runner.invoke(cli_app, ["webhooks", "secret", "acct_nope", *data_dir], env=env)
    assert unknown.exit_code == 1 and "no account" in unknown.output

    async def stored(db: Database) -> str | None:
        async with db.read() as session:
            account = await session.get(Account, issued.account_id)
            return None if account is None else account.webhook_secret

    sealed = run_db(server.settings, stored)
    assert sealed is not None and sealed.startswith("aesgcm1:") and new not in sealed
    assert SecretBox.for_settings(server.settings).open(issued.account_id, sealed) == new
