"""An account's own keys and webhook secret, and the admin API, over real HTTP on
SQLite and PostgreSQL: what each key may do, what it may not, and that money
moves only through the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from typer.testing import CliRunner

from imagine.cli.main import app as cli_app
from imagine.credits import MAX_BALANCE
from imagine.db.models import ApiKey

from conftest import RunningServer
from helpers import assert_error, balance_and_ledger, count_rows, run_db, wait_for_task
from test_webhooks import Receiver

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def data(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def wait_until_refused(server: RunningServer, key: str, timeout: float) -> float:
    """Seconds until `key` is answered 401; fails after `timeout`."""
    started = time.monotonic()
    with server.client(key) as client:
        while client.get("/v1/account").status_code != 401:
            assert time.monotonic() - started < timeout, "the revoked key still works"
            time.sleep(0.05)
    return time.monotonic() - started


# -- an account's own keys ------------------------------------------------------------------


def test_own_keys_are_created_once_listed_without_the_key_and_revoked(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0, key_cache_seconds=0)
    first = server.new_key(plan="pro")
    with server.client(first.key) as client:
        created = client.post("/v1/keys", json={"name": "staging"})
        new = data(created)
        assert all(created.headers.get(name) for name in RATE_HEADERS)
    assert new["key"].startswith("imk_") and new["display"] == (
        f"{new['key'][:8]}…{new['key'][-4:]}"
    )
    assert (new["name"], new["plan"], new["test"], new["admin"], new["revoked"]) == (
        "staging",
        "pro",
        False,
        False,
        False,
    )
    assert new["account_id"] == first.account_id

    with server.client(new["key"]) as client:
        assert data(client.get("/v1/account"))["account_id"] == first.account_id
        listed = client.get("/v1/keys")
        page = data(listed)
    assert first.key not in listed.text and new["key"] not in listed.text
    assert [k["key_id"] for k in page["keys"]] == [new["key_id"], first.key_id]  # newest first
    # The same fields, but listed after its first use, which it records.
    listed_new = {name: value for name, value in page["keys"][0].items() if name != "last_used_at"}
    assert listed_new == {
        name: value for name, value in new.items() if name not in ("key", "last_used_at")
    }

    with server.client(first.key) as client:
        revoked = data(client.delete(f"/v1/keys/{new['key_id']}"))
        assert revoked["revoked"] is True and revoked["revoked_at"]
        again = data(client.delete(f"/v1/keys/{new['key_id']}"))
        assert again["revoked_at"] == revoked["revoked_at"]
        assert_error(client.delete("/v1/keys/key_nope"), 404, "NOT_FOUND")
    assert_error(server.client(new["key"]).get("/v1/account"), 401, "UNAUTHORIZED")

    with server.client(first.key) as client:
        second = data(client.get("/v1/keys", params={"limit": 1}))
        assert second["has_more"] and len(second["keys"]) == 1
        rest = data(client.get("/v1/keys", params={"limit": 1, "after": second["next_after"]}))
        assert [k["key_id"] for k in rest["keys"]] == [first.key_id] and not rest["has_more"]
        assert_error(client.get("/v1/keys", params={"after": "key_nope"}), 400, "INVALID_REQUEST")


def test_revoking_the_calling_key_takes_effect_within_the_key_cache_bound(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0, key_cache_seconds=1)
    issued = server.new_key()
    with server.client(issued.key) as client:
        assert data(client.delete(f"/v1/keys/{issued.key_id}"))["revoked"] is True
    assert wait_until_refused(server, issued.key, timeout=10) < 10


def test_another_accounts_key_is_not_found_and_keeps_working(server: RunningServer) -> None:
    owner, stranger = server.new_key(), server.new_key()
    with server.client(stranger.key) as client:
        assert_error(client.delete(f"/v1/keys/{owner.key_id}"), 404, "NOT_FOUND")
        listed = data(client.get("/v1/keys"))["keys"]
        assert [k["key_id"] for k in listed] == [stranger.key_id]
        assert_error(client.get("/v1/keys", params={"after": owner.key_id}), 400, "INVALID_REQUEST")
    with server.client(owner.key) as client:
        assert data(client.get("/v1/keys"))["keys"][0]["revoked"] is False
        assert data(client.get("/v1/account"))["account_id"] == owner.account_id


def test_a_test_key_reaches_only_test_keys(server_factory: Any) -> None:
    server: RunningServer = server_factory(key_cache_seconds=0)
    live = server.new_key()
    with server.client(live.key) as client:
        tester = data(client.post("/v1/keys", json={"name": "ci", "test": True}))
    assert tester["test"] is True
    before = count_rows(server.settings, ApiKey)
    with server.client(tester["key"]) as client:
        refused = client.post("/v1/keys", json={"test": False})
        assert_error(refused, 403, "FORBIDDEN")
        assert all(refused.headers.get(name) for name in RATE_HEADERS)
        assert count_rows(server.settings, ApiKey) == before
        own_kind = data(client.post("/v1/keys", json={}))
        assert own_kind["test"] is True
        assert {k["test"] for k in data(client.get("/v1/keys"))["keys"]} == {True}
        assert_error(client.delete(f"/v1/keys/{live.key_id}"), 404, "NOT_FOUND")
    with server.client(own_kind["key"]) as client:
        task = wait_for_task(
            client, data(client.post("/v1/generate", json={"prompt": "p"}))["task_id"]
        )
        assert task["test"] is True and task["consumed_credits"] == 0
    with server.client(live.key) as client:
        assert len(data(client.get("/v1/keys"))["keys"]) == 3


def test_key_creation_stops_at_the_accounts_limit_and_refusal_creates_nothing(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0, account_max_keys=3)
    issued = server.new_key()
    with server.client(issued.key) as client:
        made = [data(client.post("/v1/keys"))["key_id"] for _ in range(2)]
        before = count_rows(server.settings, ApiKey)
        refused = assert_error(client.post("/v1/keys"), 400, "INVALID_REQUEST")
        assert "3 active keys" in refused["message"]
        assert count_rows(server.settings, ApiKey) == before
        data(client.delete(f"/v1/keys/{made[0]}"))
        assert data(client.post("/v1/keys"))["revoked"] is False


def test_bad_key_requests_get_the_envelope_and_change_nothing(server: RunningServer) -> None:
    issued = server.new_key()
    before = count_rows(server.settings, ApiKey)
    with server.client(issued.key) as client:
        bodies: list[Any] = [{"name": 5}, {"test": "yes"}, {"other": 1}, {"name": "x" * 201}, []]
        for body in bodies:
            assert_error(client.post("/v1/keys", json=body), 400, "INVALID_REQUEST")
        assert_error(client.post("/v1/keys", content=b"{"), 400, "INVALID_REQUEST")
    assert count_rows(server.settings, ApiKey) == before


# -- the webhook signing secret ----------------------------------------------------------------


def test_webhook_secret_made_and_rotated_through_the_api_signs_the_next_delivery(
    server: RunningServer,
) -> None:
    issued = server.new_key()
    hook = {"prompt": "p", "duration": 1}
    with server.client(issued.key) as client:
        tester = data(client.post("/v1/keys", json={"test": True}))["key"]
        with server.client(tester) as test_client:
            assert_error(test_client.post("/v1/webhooks/secret"), 403, "FORBIDDEN")
        first = data(client.post("/v1/webhooks/secret"))
        assert first["secret"].startswith("whsec_") and first["rotated"] is False
        with Receiver(first["secret"]) as receiver:
            done = data(
                client.post("/v1/generate", json={**hook, "callback_url": receiver.url("/ok")})
            )
            wait_for_task(client, done["task_id"])
            [delivered] = receiver.wait_for("/ok")
            assert delivered.payload["data"]["task_id"] == done["task_id"]
            assert receiver.forged == []

        kept = assert_error(client.post("/v1/webhooks/secret"), 409, "WEBHOOK_SECRET_EXISTS")
        assert first["secret"] not in kept["message"]
        rotated = data(client.post("/v1/webhooks/secret", json={"rotate": True}))
        assert rotated["rotated"] is True and rotated["secret"] != first["secret"]
        with Receiver(rotated["secret"]) as receiver:
            done = data(
                client.post("/v1/generate", json={**hook, "callback_url": receiver.url("/ok")})
            )
            wait_for_task(client, done["task_id"])
            [delivered] = receiver.wait_for("/ok")
            assert receiver.forged == []
        with pytest.raises(WebhookVerificationError):
            Webhook(first["secret"]).verify(delivered.body, delivered.headers)
        bad = client.post("/v1/webhooks/secret", json={"rotate": "yes"})
        message = assert_error(bad, 400, "INVALID_REQUEST")["message"]
        assert message == "Invalid request: The rotate parameter must be true or false"


# -- the admin API -------------------------------------------------------------------------------

ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/accounts", None),
    ("POST", "/v1/admin/accounts", {"plan": "pro", "credits": 100}),
    ("POST", "/v1/admin/accounts/{account}/credits", {"amount": 1000}),
    ("GET", "/v1/admin/keys", None),
    ("DELETE", "/v1/admin/keys/{key}", None),
    ("GET", "/v1/admin/queue", None),
]


def test_admin_routes_refuse_every_key_but_an_admin_key(server: RunningServer) -> None:
    admin = server.new_admin_key()
    user = server.new_key(plan="enterprise")
    with server.client(user.key) as client:
        tester = data(client.post("/v1/keys", json={"test": True}))["key"]
    with server.client(admin.key) as client:  # the admin's account's other keys hold no power
        sibling = data(client.post("/v1/keys", json={"name": "app"}))
    assert sibling["admin"] is False
    before = run_db(server.settings, lambda db: balance_and_ledger(db, user.account_id))
    keys_before = count_rows(server.settings, ApiKey)
    for key in (user.key, tester, sibling["key"]):
        with server.client(key) as client:
            for method, path, payload in ADMIN_CALLS:
                url = path.format(account=user.account_id, key=user.key_id)
                answer = client.request(method, url, json=payload)
                assert_error(answer, 403, "FORBIDDEN")
                assert all(answer.headers.get(name) for name in RATE_HEADERS)
            malformed = client.post("/v1/admin/accounts", content=b"not json")
            assert_error(malformed, 403, "FORBIDDEN")
    assert run_db(server.settings, lambda db: balance_and_ledger(db, user.account_id)) == before
    assert count_rows(server.settings, ApiKey) == keys_before
    with server.client(user.key) as client:  # nothing was revoked
        assert_error(client.delete(f"/v1/keys/{admin.key_id}"), 404, "NOT_FOUND")
        assert client.get("/v1/account").status_code == 200
    with server.client(sibling["key"]) as client:
        assert_error(client.delete(f"/v1/keys/{admin.key_id}"), 403, "FORBIDDEN")


def test_admin_opens_an_account_and_its_key_sees_the_credits_granted(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0, key_cache_seconds=0)
    admin = server.new_admin_key()
    with server.client(admin.key) as client:
        opened = data(
            client.post(
                "/v1/admin/accounts", json={"plan": "pro", "credits": 500, "name": "Studio"}
            )
        )
        account_id = opened["account_id"]
        assert (opened["plan"], opened["name"], opened["balance"]) == ("pro", "Studio", 500)
        granted = data(
            client.post(
                f"/v1/admin/accounts/{account_id}/credits", json={"amount": 250, "note": "top-up"}
            )
        )
        assert granted == {"account_id": account_id, "granted": 250, "balance": 750}

        too_much = client.post(
            f"/v1/admin/accounts/{account_id}/credits", json={"amount": MAX_BALANCE}
        )
        assert "nothing was granted" in assert_error(too_much, 400, "INVALID_REQUEST")["message"]
        for amount in (0, -5, MAX_BALANCE + 1, 1.5, "10"):
            answer = client.post(
                f"/v1/admin/accounts/{account_id}/credits", json={"amount": amount}
            )
            assert_error(answer, 400, "INVALID_REQUEST")
        assert_error(
            client.post("/v1/admin/accounts/acct_nope/credits", json={"amount": 1}),
            404,
            "NOT_FOUND",
        )
        assert_error(
            client.post("/v1/admin/accounts", json={"plan": "gold"}), 400, "INVALID_REQUEST"
        )
        assert_error(
            client.post("/v1/admin/accounts", json={"credits": MAX_BALANCE + 1}),
            400,
            "INVALID_REQUEST",
        )

    with server.client(opened["key"]) as client:
        account = data(client.get("/v1/account"))
        assert (account["account_id"], account["plan"], account["balance"]) == (
            account_id,
            "pro",
            750,
        )
        entries = data(client.get("/v1/account/ledger"))["entries"]
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("grant", 250, 750),
        ("grant", 500, 500),
    ]
    assert admin.key_id in entries[0]["note"] and "top-up" in entries[0]["note"]
    assert run_db(server.settings, lambda db: balance_and_ledger(db, account_id)) == (750, 750)

    with server.client(admin.key) as client:
        seen: list[dict[str, Any]] = []
        after = None
        while True:
            params = {"limit": 1, **({"after": after} if after else {})}
            page = data(client.get("/v1/admin/accounts", params=params))
            seen += page["accounts"]
            if not page["has_more"]:
                break
            after = page["next_after"]
        assert {a["account_id"] for a in seen} == {account_id, admin.account_id}
        listed = next(a for a in seen if a["account_id"] == account_id)
        assert (listed["balance"], listed["active_keys"], listed["webhook_secret"]) == (
            750,
            1,
            False,
        )

        keys = data(client.get("/v1/admin/keys", params={"account_id": account_id}))["keys"]
        assert [k["key_id"] for k in keys] == [opened["key_id"]] and opened["key"] not in str(keys)
        assert {k["account_id"] for k in data(client.get("/v1/admin/keys"))["keys"]} == {
            account_id,
            admin.account_id,
        }
        assert data(client.delete(f"/v1/admin/keys/{opened['key_id']}"))["revoked"] is True
        assert_error(client.delete("/v1/admin/keys/key_nope"), 404, "NOT_FOUND")
    assert_error(server.client(opened["key"]).get("/v1/account"), 401, "UNAUTHORIZED")


def test_the_cli_makes_admin_keys_and_never_test_admin_keys(server: RunningServer) -> None:
    runner = CliRunner()
    env = {"IMAGINE_DATABASE_URL": server.settings.resolved_database_url}
    data_dir = ["--data-dir", str(server.settings.data_dir)]
    made = runner.invoke(cli_app, ["keys", "create", "--admin", "--json", *data_dir], env=env)
    assert made.exit_code == 0, made.output
    issued = json.loads(made.output)
    assert issued["admin"] is True
    with server.client(issued["key"]) as client:
        assert client.get("/v1/admin/accounts").status_code == 200
    both = runner.invoke(cli_app, ["keys", "create", "--admin", "--test", *data_dir], env=env)
    assert both.exit_code == 2 and "admin key cannot be a test key" in both.output
    listed = runner.invoke(cli_app, ["keys", "list", "--json", *data_dir], env=env)
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [row["admin"] for row in rows if row["key_id"] == issued["key_id"]] == [True]


# -- the OpenAPI document ------------------------------------------------------------------------


def _has_example(item: dict[str, Any]) -> bool:
    return bool(item.get("example") is not None or item.get("examples"))


def test_openapi_shows_an_example_of_every_request_and_every_documented_answer(
    server: RunningServer,
) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    names = {name for name, _ in operations}
    for route in ("POST /v1/keys", "POST /v1/webhooks/secret", "GET /v1/admin/accounts"):
        assert route in names
    missing: list[str] = []
    for name, operation in operations:
        for parameter in operation.get("parameters", []):
            if not _has_example(parameter):
                missing.append(f"{name}: parameter {parameter['name']}")
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None and not _has_example(body):
            missing.append(f"{name}: request body")
        responses = operation["responses"]
        statuses = set(responses)
        if name.split()[1].startswith("/v1/"):
            assert {"200", "401", "429"} <= statuses, name
        if operation.get("parameters") or body is not None:
            assert statuses & {"400", "404"}, name
        for status, response in responses.items():
            media = response.get("content", {}).get("application/json", {})
            if not _has_example(media):
                missing.append(f"{name}: {status} answer")
            for example in [
                media.get("example"),
                *[e["value"] for e in media.get("examples", {}).values()],
            ]:
                if example is not None:
                    assert example["code"] == int(status), (name, status)
    assert missing == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_admin_sees_the_queue_backlog_by_engine(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(workers=0)
    admin = server.new_admin_key()
    user = server.new_key()
    with server.client(user.key) as client:
        for _ in range(3):
            assert client.post("/v1/generate", json={"prompt": "waits"}).status_code == 200
    with server.client(admin.key) as client:
        queue = client.get("/v1/admin/queue").json()["data"]
    assert (queue["pending"], queue["processing"]) == (3, 0)
    assert queue["oldest_pending_seconds"] >= 0 and queue["oldest_pending_at"].endswith("Z")
    (engine,) = queue["engines"]
    assert engine["engine"] == "preview" and engine["pending"] == 3
    assert engine["finished_24h"] == {"cancelled": 0, "completed": 0, "failed": 0}
    assert queue["recent_failures"] == []
