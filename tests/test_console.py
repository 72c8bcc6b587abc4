"""The web console over real HTTP: sessions, CSRF, headers, isolation between
accounts, and each page's actions reaching the same services as the API.
(Browser behaviour — scripts, playback, accessibility — is in
test_console_browser.py.)"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select, update

from imagine.accounts import service as accounts
from imagine.db.database import Database
from imagine.db.models import ApiKey, ConsoleSession, LedgerEntry
from imagine.ids import utcnow

from conftest import RunningServer
from helpers import run_db, wait_for_task
from processes import ImagineProcess, ServeProcess

XSS = "<img src=x onerror=alert(1)>"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@contextmanager
def sign_in(server: RunningServer, key: str) -> Iterator[httpx.Client]:
    """A client with a console session opened with `key`."""
    with server.client(follow_redirects=False) as client:
        answer = client.post("/signin", data={"api_key": key, "next": "/"})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/"
        yield client


def csrf_of(client: httpx.Client, page: str = "/keys") -> str:
    found = CSRF_FIELD.search(client.get(page).text)
    assert found is not None
    return found.group(1)


def balance_of(server: RunningServer, key: str) -> int:
    with server.client(key) as api:
        return int(api.get("/v1/account").json()["data"]["balance"])


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


# -- sessions ---------------------------------------------------------------------------


def test_pages_need_a_session_and_sign_in_opens_one(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(follow_redirects=False) as anonymous:
        for page in ("/", "/playground", "/tasks", "/keys", "/usage", "/webhooks", "/admin"):
            answer = anonymous.get(page)
            assert answer.status_code == 303, page
            assert answer.headers["location"].startswith("/signin")
        form = anonymous.get("/signin")
        assert form.status_code == 200
        assert 'type="password"' in form.text and 'name="api_key"' in form.text
    with sign_in(server, issued.key) as client:
        cookie = client.cookies.jar
        (session_cookie,) = list(cookie)
        assert session_cookie.name == "imagine_session"
        assert issued.key not in (session_cookie.value or "")
        overview = client.get("/")
        assert overview.status_code == 200
        assert "1,000" in overview.text  # the balance
        assert issued.key not in overview.text  # never the key, only its display form
        assert "$IMAGINE_API_KEY" in overview.text


def test_the_cookie_is_http_only_strict_and_secure_over_https(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(follow_redirects=False) as client:
        plain = client.post("/signin", data={"api_key": issued.key})
        cookie = plain.headers["set-cookie"]
        assert cookie.startswith("imagine_session=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie
        # Behind a TLS-terminating proxy on loopback (uvicorn trusts its forwarded headers).
        tls = client.post(
            "/signin", data={"api_key": issued.key}, headers={"X-Forwarded-Proto": "https"}
        )
        cookie = tls.headers["set-cookie"]
        assert cookie.startswith("__Host-imagine_session=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_a_wrong_key_gets_one_generic_message(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client() as client:

        async def revoke(db: Database) -> None:
            async with db.write() as session:
                await accounts.revoke_key(session, issued.key_id)

        run_db(server.settings, revoke)
        answers = [
            client.post("/signin", data={"api_key": key})
            for key in ("imk_" + "x" * 38, "not a key", "", issued.key)
        ]
    for answer in answers:
        assert answer.status_code == 401
        assert "That key was not accepted" in answer.text
        assert "imagine_session" not in answer.headers.get("set-cookie", "")
    assert issued.key not in answers[-1].text  # the key is never echoed back


def test_sign_in_attempts_are_rate_limited(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(console_signins_per_minute=3)
    with server.client() as client:
        codes = [client.post("/signin", data={"api_key": "wrong"}).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        refused = client.post("/signin", data={"api_key": server.new_key().key})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_revoking_the_key_ends_its_sessions_at_once(server: RunningServer) -> None:
    owner = server.new_key()
    with sign_in(server, owner.key) as first:
        token = csrf_of(first)
        made = first.post("/keys", data={"name": "laptop", "csrf_token": token})
        (second_key,) = re.findall(r'id="new-key">(imk_[A-Za-z0-9]+)<', made.text)
        with sign_in(server, second_key) as second:
            assert second.get("/tasks").status_code == 200
            with server.client(owner.key) as api:
                key_id = next(
                    k["key_id"]
                    for k in api.get("/v1/keys").json()["data"]["keys"]
                    if k["name"] == "laptop"
                )
                assert api.delete(f"/v1/keys/{key_id}").status_code == 200
            ended = second.get("/tasks")
            assert ended.status_code == 303 and ended.headers["location"].startswith("/signin")
        assert first.get("/tasks").status_code == 200  # the other key's session lives on


def test_idle_and_absolute_timeouts_end_a_session(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        assert client.get("/").status_code == 200

        async def age(db: Database, **moved: timedelta) -> None:
            async with db.write() as session:
                now = utcnow()
                await session.execute(
                    update(ConsoleSession).values(
                        {name: now - delta for name, delta in moved.items()}
                    )
                )

        run_db(server.settings, lambda db: age(db, last_seen_at=timedelta(hours=2)))
        assert client.get("/").status_code == 303  # idle for longer than an hour
    with sign_in(server, issued.key) as client:
        run_db(server.settings, lambda db: age(db, created_at=timedelta(hours=13)))
        assert client.get("/").status_code == 303  # older than 12 hours, however active


def test_sign_out_is_a_post_that_deletes_the_session(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        assert client.get("/signout").status_code in (404, 405)
        assert client.post("/signout", data={}).status_code == 403  # no CSRF token
        out = client.post("/signout", data={"csrf_token": csrf_of(client)})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
        assert "cookies" in out.headers["clear-site-data"]

        async def count(db: Database) -> int:
            async with db.read() as session:
                return len(list(await session.scalars(select(ConsoleSession.token_hash))))

        assert run_db(server.settings, count) == 0
        assert client.get("/").status_code == 303


# -- CSRF, headers, escaping, isolation ----------------------------------------------------


def test_state_changes_need_the_csrf_token_and_our_origin(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        token = csrf_of(client)
        actions = ["/keys", "/playground", "/webhooks/secret"]
        for path in actions:
            assert client.post(path, data={"prompt": "x", "name": "x"}).status_code == 403, path
            assert client.post(path, data={"csrf_token": "0" * 64}).status_code == 403, path
        cross = client.post(
            "/keys", data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403
        foreign = client.post(
            "/keys", data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        with server.client(issued.key) as api:
            keys = api.get("/v1/keys").json()["data"]["keys"]
            tasks = api.get("/v1/tasks").json()["data"]["tasks"]
        assert len(keys) == 1 and tasks == []  # nothing was created
        assert balance_of(server, issued.key) == 1000
        # htmx sends the token as a header instead of a field.
        made = client.post("/keys", data={"name": "via-header"}, headers={"X-CSRF-Token": token})
        assert made.status_code == 200 and "via-header" in made.text


def test_pages_carry_a_strict_policy_and_are_never_cached(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client, server.client() as anonymous:
        pages = [client.get(page) for page in ("/", "/playground", "/tasks", "/keys", "/usage")]
        for answer in [*pages, client.get("/webhooks"), anonymous.get("/signin")]:
            headers, page = answer.headers, answer.url.path
            policy = headers["content-security-policy"]
            script = next(d for d in policy.split("; ") if d.startswith("script-src"))
            assert script == "script-src 'self'", page
            assert "unsafe" not in policy
            assert "frame-ancestors 'none'" in policy and "media-src 'self'" in policy
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["cache-control"] == "no-store"
            assert headers["content-type"].startswith("text/html")


def test_a_storage_origin_is_allowed_for_media(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(public_url="https://videos.example.com:8443/base")
    with sign_in(server, server.new_key().key) as client:
        policy = client.get("/").headers["content-security-policy"]
    assert "media-src 'self' https://videos.example.com:8443;" in policy


def test_a_prompt_is_shown_as_text_everywhere(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as api:
        task_id = api.post("/v1/generate", json={"prompt": XSS, "duration": 1}).json()["data"][
            "task_id"
        ]
        wait_for_task(api, task_id)
    with sign_in(server, issued.key) as client:
        for page in ("/", "/tasks", f"/tasks/{task_id}"):
            html = client.get(page).text
            assert XSS not in html, page
            assert "&lt;img src=x onerror=alert(1)&gt;" in html, page


def test_one_account_never_sees_another_accounts_things(server: RunningServer) -> None:
    alice, bob = server.new_key(), server.new_key()
    with server.client(alice.key) as api:
        task_id = api.post("/v1/generate", json={"prompt": "alice's secret"}).json()["data"][
            "task_id"
        ]
    with sign_in(server, bob.key) as client:
        token = csrf_of(client)
        assert client.get(f"/tasks/{task_id}").status_code == 404
        assert client.get(f"/tasks/{task_id}/live").status_code == 404
        assert client.post(f"/tasks/{task_id}/cancel", data={"csrf_token": token}).status_code == (
            404
        )
        assert client.get(f"/keys/{alice.key_id}/revoke").status_code == 404
        revoke = client.post(f"/keys/{alice.key_id}/revoke", data={"csrf_token": token})
        assert revoke.status_code == 404
        for page in ("/", "/tasks", "/usage", "/keys"):
            html = client.get(page).text
            assert task_id not in html and "alice&#39;s secret" not in html, page
            assert alice.key_id not in html and alice.account_id not in html, page
        for page in ("/admin", f"/admin/accounts/{alice.account_id}", "/admin/queue"):
            assert client.get(page).status_code == 403, page
        grant = client.post(
            f"/admin/accounts/{bob.account_id}/grant", data={"csrf_token": token, "amount": "5"}
        )
        assert grant.status_code == 403
    with server.client(alice.key) as api:
        assert api.get("/v1/status", params={"task_id": task_id}).json()["data"]["status"] in (
            "pending",
            "processing",
            "completed",
        )
    assert balance_of(server, bob.key) == 1000


def test_the_console_can_be_turned_off(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(console=False)
    with server.client() as client:
        for page in ("/", "/signin", "/tasks"):
            answer = client.get(page)
            assert answer.status_code == 404 and answer.json()["code"] == 404
        assert client.get("/docs").status_code == 200  # the API reference stays


# -- pages and their actions -------------------------------------------------------------


def test_the_playground_submits_through_the_api_rules(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        page = client.get("/playground").text
        assert "Costs 40 credits on the preview engine" in page
        token = csrf_of(client, "/playground")
        refused = client.post(
            "/playground",
            data={"csrf_token": token, "prompt": "x", "duration": "99"},
            headers={"HX-Request": "true"},
        )
        assert refused.status_code == 200 and "Not submitted" in refused.text
        assert "duration" in refused.text
        junk = client.post(
            "/playground",
            data={"csrf_token": token, "prompt": "from a file"},
            files={"image_files": ("notes.png", b"not an image", "image/png")},
            headers={"HX-Request": "true"},
        )
        assert "is not a PNG, JPEG, WebP or GIF image" in junk.text
        assert balance_of(server, issued.key) == 1000  # refusals charge nothing
        made = client.post(
            "/playground",
            data={"csrf_token": token, "prompt": "a red square", "duration": "1", "ratio": "1:1"},
            files={"image_files": ("red.png", png_bytes(), "image/png")},
        )
        assert made.status_code == 303
        task_id = made.headers["location"].removeprefix("/tasks/")
    with server.client(issued.key) as api:
        done = wait_for_task(api, task_id)
    assert done["request"]["images"][0].startswith("data:image/png;base64,…(")
    assert done["request"]["ratio"] == "1:1" and done["request"]["duration"] == 1
    assert balance_of(server, issued.key) == 960
    with sign_in(server, issued.key) as client:
        live = client.get(f"/tasks/{task_id}/live").text
        assert "<video" in live and 'value="100"' in live and "hx-trigger" not in live


def test_snippets_follow_the_form_and_never_show_the_key(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        token = csrf_of(client, "/playground")
        answer = client.post(
            "/playground/snippets",
            data={
                "csrf_token": token,
                "prompt": 'it\'s a "quoted" prompt',
                "ratio": "9:16",
                "seed": "7",
                "image_urls": "https://example.com/a.png",
                "image_file_count": "1",
            },
        )
    html = answer.text
    assert "$IMAGINE_API_KEY" in html and issued.key not in html
    assert "curl -X POST" in html and "/v1/generate" in html
    assert "&#34;ratio&#34;: &#34;9:16&#34;" in html and "&#34;seed&#34;: 7" in html
    assert "--ratio 9:16" in html and "--seed 7" in html and "--image" in html
    assert "client.run(" in html and "seed=7" in html
    assert "data:image/png;base64,…" in html


def test_cancel_from_the_console_refunds(sqlite_server: Callable[..., RunningServer]) -> None:
    server = sqlite_server(workers=0)
    issued = server.new_key()
    with server.client(issued.key) as api:
        task_id = api.post("/v1/generate", json={"prompt": "never runs"}).json()["data"]["task_id"]
    assert balance_of(server, issued.key) == 960
    with sign_in(server, issued.key) as client:
        live = client.get(f"/tasks/{task_id}/live").text
        assert "Place in the queue" in live and 'id="cancel-task"' in live
        token = csrf_of(client)
        cancelled = client.post(
            f"/tasks/{task_id}/cancel", data={"csrf_token": token}, headers={"HX-Request": "true"}
        )
        assert "badge-cancelled" in cancelled.text
        again = client.post(
            f"/tasks/{task_id}/cancel", data={"csrf_token": token}, headers={"HX-Request": "true"}
        )
        assert "already cancelled" in again.text
        usage = client.get("/usage").text
        assert "refund" in usage and task_id in usage
    assert balance_of(server, issued.key) == 1000


def test_keys_are_created_shown_once_and_revoked(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        token = csrf_of(client)
        made = client.post("/keys", data={"csrf_token": token, "name": "ci", "test": "on"})
        (new_key,) = re.findall(r'id="new-key">(imk_[A-Za-z0-9]+)<', made.text)
        listing = client.get("/keys").text
        assert new_key not in listing and "ci" in listing  # shown once
        with server.client(new_key) as api:
            assert api.get("/v1/account").json()["data"]["test"] is True
            key_id = api.get("/v1/keys").json()["data"]["keys"][0]["key_id"]
        confirm = client.get(f"/keys/{key_id}/revoke")
        assert confirm.status_code == 200 and "cannot be undone" in confirm.text
        revoked = client.post(f"/keys/{key_id}/revoke", data={"csrf_token": token})
        assert revoked.status_code == 303 and revoked.headers["location"] == "/keys"
        # The API refuses it once its key cache expires; signing in looks it up now.
        with server.client() as fresh:
            assert fresh.post("/signin", data={"api_key": new_key}).status_code == 401
        assert "revoked" in client.get("/keys").text


def test_keys_record_when_they_were_last_used(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as api:
        assert api.get("/v1/account").status_code == 200

    async def last_used(db: Database) -> Any:
        async with db.read() as session:
            return await session.scalar(
                select(ApiKey.last_used_at).where(ApiKey.id == issued.key_id)
            )

    deadline = 50
    while run_db(server.settings, last_used) is None and deadline:
        deadline -= 1
        import time

        time.sleep(0.1)
    assert run_db(server.settings, last_used) is not None
    with server.client(issued.key) as api:
        (key,) = api.get("/v1/keys").json()["data"]["keys"]
    assert key["last_used_at"] is not None


def test_webhook_secret_is_created_once_then_rotated(server: RunningServer) -> None:
    issued = server.new_key()
    with sign_in(server, issued.key) as client:
        token = csrf_of(client, "/webhooks")
        assert "no signing secret yet" in client.get("/webhooks").text
        first = client.post("/webhooks/secret", data={"csrf_token": token})
        (secret,) = re.findall(r'id="webhook-secret">(whsec_[^<]+)<', first.text)
        page = client.get("/webhooks").text
        assert secret not in page and "Rotate the secret" in page
        rotated = client.post("/webhooks/secret", data={"csrf_token": token, "rotate": "yes"})
        (second,) = re.findall(r'id="webhook-secret">(whsec_[^<]+)<', rotated.text)
        assert second != secret
    with server.client(issued.key) as api:
        accepted = api.post(
            "/v1/generate",
            json={"prompt": "hooked", "callback_url": "https://example.com/hook"},
        )
        assert accepted.status_code == 200


def test_usage_shows_the_ledger_and_spend_per_day(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as api:
        for _ in range(2):
            task_id = api.post("/v1/generate", json={"prompt": "spend", "duration": 1}).json()[
                "data"
            ]["task_id"]
            wait_for_task(api, task_id)
    with sign_in(server, issued.key) as client:
        html = client.get("/usage").text
    assert html.count('class="bar"') == 30
    assert "Total: 80 credits" in html
    today = utcnow().date().isoformat()
    assert f"<title>{today}: 80 credits</title>" in html
    assert html.count('class="kind-debit"') == 2 and 'class="kind-grant"' in html


def test_the_operator_opens_accounts_grants_and_revokes(server: RunningServer) -> None:
    operator = server.new_admin_key()
    user = server.new_key()
    with sign_in(server, operator.key) as client:
        token = csrf_of(client, "/admin")
        assert user.account_id in client.get("/admin").text
        granted = client.post(
            f"/admin/accounts/{user.account_id}/grant",
            data={"csrf_token": token, "amount": "250", "note": "welcome"},
        )
        assert granted.status_code == 303
        page = client.get(f"/admin/accounts/{user.account_id}").text
        assert 'id="account-balance">1,250<' in page
        opened = client.post(
            "/admin/accounts",
            data={"csrf_token": token, "name": "newcomer", "plan": "pro", "credits": "77"},
        )
        (first_key,) = re.findall(r'id="issued-key">(imk_[A-Za-z0-9]+)<', opened.text)
        assert balance_of(server, first_key) == 77
        refused = client.post(
            "/admin/accounts",
            data={"csrf_token": token, "plan": "platinum", "credits": "1"},
        )
        assert refused.status_code == 400 and "plan parameter" in refused.text
        revoked = client.post(f"/admin/keys/{user.key_id}/revoke", data={"csrf_token": token})
        assert revoked.status_code == 303
        queue = client.get("/admin/queue")
        assert queue.status_code == 200 and "Oldest pending" in queue.text
    assert balance_of(server, first_key) == 77
    with server.client(user.key) as api:
        assert api.get("/v1/account").status_code == 401

    async def grants(db: Database) -> list[str]:
        async with db.read() as session:
            return list(
                await session.scalars(
                    select(LedgerEntry.note).where(
                        LedgerEntry.account_id == user.account_id, LedgerEntry.kind == "grant"
                    )
                )
            )

    assert any(
        operator.key_id in note and "welcome" in note for note in run_db(server.settings, grants)
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_queue_page_shows_backlog_and_failure_reasons(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(workers=1)
    operator = server.new_admin_key()
    tester = server.new_key()

    async def test_key(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.add_key(
                session,
                accounts.Principal(account_id=tester.account_id, plan="free", key_id=tester.key_id),
                name="t",
                test=True,
                max_keys=10,
            )

    issued = run_db(server.settings, test_key)
    with server.client(issued.key) as api:
        failing = api.post(
            "/v1/generate",
            json={"prompt": "fails"},
            headers={"Imagine-Test-Outcome": "network"},
        ).json()["data"]["task_id"]
        wait_for_task(api, failing)
    with sign_in(server, operator.key) as client:
        html = client.get("/admin/queue").text
    assert failing in html
    assert "Network error, please try again later." in html


def test_serve_points_first_to_the_console_with_its_key(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    serving = ServeProcess(tmp_path / "data", "--workers", "0")
    processes.append(serving)
    serving.wait_for_output("Imagine serving on")
    output = serving.output()
    key = re.search(r"API key \(shown once, keep it\): (imk_\w+)", output)
    console = re.search(r"Console: (http://\S+/) \(sign in with the API key above\)", output)
    assert key is not None and console is not None, output
    assert console.group(1) == serving.url + "/"
    first_url = re.search(r"https?://\S+", output[key.end() :])
    assert first_url is not None and first_url.group(0) == console.group(1)  # before any other
    with httpx.Client(base_url=serving.url, follow_redirects=False) as client:
        signed = client.post("/signin", data={"api_key": key.group(1)})
        assert signed.status_code == 303
        assert "Overview" in client.get("/").text
