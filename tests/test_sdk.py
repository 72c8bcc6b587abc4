"""The Python SDK (`imagine.client`) against a real Imagine server on loopback.

The SDK is a client: nothing it proves depends on the server's database, so
these tests run their servers on SQLite only (the server's own tests cover
PostgreSQL). Faults the real server cannot be asked to produce on cue (a 429
that clears in a second, an answer lost after the task was made) come from a
small proxy in front of the real server, never from a mock of it.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from imagine.app import create_app
from imagine.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    ImagineError,
    InsufficientCredits,
    InvalidRequest,
    MissingAPIKey,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Task,
    TaskFailed,
    Unauthorized,
    UnexpectedResponse,
    UsageError,
    WaitTimeout,
)
from imagine.media.video import probe_mp4
from imagine.server import uvicorn_config
from imagine.settings import Settings

from conftest import RunningServer, make_settings, start_server
from helpers import balance_and_ledger, image_bytes, run_db
from loopback_doubles import FaultProxy, Reply, Seen, envelope, serve_files

ROOT = Path(__file__).resolve().parents[1]
Factory = Callable[..., RunningServer]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for every test that needs no special settings (each uses its own key)."""
    running = start_server(make_settings(tmp_path_factory.mktemp("sdk")))
    yield running
    running.stop()


@pytest.fixture
def api_key(shared: RunningServer) -> str:
    """A fresh account's key (made outside any event loop: key creation runs its own)."""
    return shared.new_key().key


@pytest.fixture
def client(shared: RunningServer, api_key: str) -> Iterator[Client]:
    with Client(api_key, shared.url) as sdk:
        yield sdk


def assert_playable(path: Path, size: tuple[int, int], seconds: float) -> None:
    video = probe_mp4(path)
    assert (video.width, video.height) == size
    assert video.codec == "h264"
    assert abs(video.duration_seconds - seconds) < 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the happy path ----------------------------------------------------------


def test_run_then_download_gives_a_typed_task_and_playable_video(
    client: Client, tmp_path: Path
) -> None:
    seen: list[Task] = []
    task = client.run(
        "a lighthouse at dusk",
        ratio="1:1",
        duration=1,
        seed=7,
        poll_interval=0.05,
        on_progress=seen.append,
    )

    assert task.status == "completed" and task.succeeded and task.finished and not task.failed
    assert task.task_id.startswith("task_")
    assert task.consumed_credits == 40
    assert task.error_message is None
    assert task.progress == 100
    assert task.engine == "preview"
    assert task.request == {
        "mode": "normal",
        "prompt": "a lighthouse at dusk",
        "ratio": "1:1",
        "duration": 1,
        "resolution": "480p",
        "seed": 7,
    }
    assert task.created_at.tzinfo is not None
    assert task.updated_at is not None and task.updated_at >= task.created_at
    # Additive fields the SDK does not know yet are kept, not dropped.
    assert set(task.extra).isdisjoint(Task.__dataclass_fields__)
    assert task.to_dict().items() >= task.extra.items()
    assert task.rate_limit is not None and task.rate_limit.limit == 100
    assert 0 <= task.rate_limit.remaining < 100
    assert task.rate_limit.reset_at > datetime.now(UTC)
    assert task.to_dict()["created_at"].endswith("Z")
    # The callback saw each change once, ending with the finished task.
    assert seen and seen[-1].status == "completed"
    states = [(t.status, t.progress) for t in seen]
    assert len(states) == len(set(states))

    paths = client.download(task, tmp_path / "videos" / "nested")
    assert paths == [tmp_path / "videos" / "nested" / f"{task.task_id}_0.mp4"]
    assert_playable(paths[0], (480, 480), 1.0)
    assert not list(paths[0].parent.glob("*.part"))


async def test_async_client_is_the_same_api_with_awaitable_callbacks(
    shared: RunningServer, api_key: str, tmp_path: Path
) -> None:
    updates: list[str] = []

    async def on_progress(task: Task) -> None:
        await asyncio.sleep(0)
        updates.append(task.status)

    async with AsyncClient(api_key, shared.url) as sdk:
        square, tall = await asyncio.gather(
            sdk.run("square", ratio="1:1", duration=1, poll_interval=0.05, on_progress=on_progress),
            sdk.run("tall", ratio="3:4", duration=1, poll_interval=0.05),
        )
        assert (await sdk.status(square.task_id)) == square
        paths = await sdk.download(tall.task_id, tmp_path)  # by id: fetches fresh links
    assert updates[-1] == "completed"
    assert paths == [tmp_path / f"{tall.task_id}_0.mp4"]
    assert_playable(paths[0], (480, 640), 1.0)


def test_images_of_every_kind_are_sent_inline_and_animated(client: Client, tmp_path: Path) -> None:
    jpeg_file = tmp_path / "photo.jpg"
    jpeg_file.write_bytes(image_bytes((200, 40, 40), "JPEG"))
    webp = image_bytes((40, 200, 40), "WEBP")
    pil = Image.new("RGB", (64, 48), (40, 40, 200))
    gif_url = "data:image/gif;base64," + base64.b64encode(image_bytes((9, 9, 9), "GIF")).decode()

    task = client.run(
        "four images",
        images=[jpeg_file, webp, pil, gif_url],
        ratio="1:1",
        duration=1,
        poll_interval=0.05,
    )
    assert task.succeeded, task.error_message
    kinds = [url.split(";", 1)[0] for url in task.request["images"]]
    assert kinds == ["data:image/jpeg", "data:image/webp", "data:image/png", "data:image/gif"]

    # A single image may be passed bare, and a path as a plain string.
    one = client.status(client.generate("one image", images=str(jpeg_file), duration=1))
    assert [url.split(";", 1)[0] for url in one.request["images"]] == ["data:image/jpeg"]


def test_unusable_images_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    def nothing_may_be_sent(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"sent {request.url}")

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with Client("imk_test", transport=httpx.MockTransport(nothing_may_be_sent)) as sdk:
        for bad in (tmp_path / "missing.png", str(not_an_image), b"GIF", 42):
            with pytest.raises(UsageError) as caught:
                sdk.generate("x", images=[bad])  # type: ignore[list-item]
            assert isinstance(caught.value, ValueError)
            assert "images[0]" in str(caught.value)


def test_key_and_url_come_from_the_environment(
    shared: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGINE_API_KEY", raising=False)
    monkeypatch.delenv("IMAGINE_BASE_URL", raising=False)
    with pytest.raises(MissingAPIKey, match="IMAGINE_API_KEY"):
        Client()
    monkeypatch.setenv("IMAGINE_API_KEY", "imk_anything")
    assert Client().base_url == "http://127.0.0.1:8000"
    with pytest.raises(UsageError, match="http"):
        Client(base_url="127.0.0.1:8000")

    monkeypatch.setenv("IMAGINE_API_KEY", shared.new_key().key)
    monkeypatch.setenv("IMAGINE_BASE_URL", shared.url)
    with Client() as sdk, pytest.raises(NotFound):
        sdk.status("task_nope")


# -- every error the server can answer ----------------------------------------


def test_contract_errors_become_typed_exceptions(shared: RunningServer, client: Client) -> None:
    with pytest.raises(InvalidRequest) as bad:
        client.generate("x", ratio="5:4")
    assert (bad.value.status, bad.value.code) == (400, "INVALID_REQUEST")
    assert "ratio" in bad.value.message
    assert "HTTP 400 INVALID_REQUEST" in str(bad.value)

    with Client("imk_wrong", shared.url) as stranger, pytest.raises(Unauthorized) as denied:
        stranger.status("task_x")
    assert (denied.value.status, denied.value.code) == (401, "UNAUTHORIZED")
    assert denied.value.headers["www-authenticate"] == "Bearer"

    with (
        Client(shared.new_key(credits=0).key, shared.url) as broke,
        pytest.raises(InsufficientCredits) as poor,
    ):
        broke.generate("x")
    assert (poor.value.status, poor.value.code) == (402, "INSUFFICIENT_CREDITS")

    with pytest.raises(NotFound) as missing:
        client.status("task_nope")
    assert (missing.value.status, missing.value.code) == (404, "NOT_FOUND")

    client.generate("first", idempotency_key="same-key", duration=1)
    with pytest.raises(Conflict) as clash:
        client.generate("second", idempotency_key="same-key", duration=1)
    assert (clash.value.status, clash.value.code) == (409, "IDEMPOTENCY_CONFLICT")

    for error in (bad, denied, poor, missing, clash):
        assert isinstance(error.value, APIError) and isinstance(error.value, ImagineError)


def test_webhook_secret_is_shown_once_rotated_on_request_and_kept_from_test_keys(
    shared: RunningServer, client: Client
) -> None:
    secret = client.create_webhook_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    with pytest.raises(Conflict) as exists:
        client.create_webhook_secret()
    assert (exists.value.status, exists.value.code) == (409, "WEBHOOK_SECRET_EXISTS")
    assert secret not in str(exists.value)
    rotated = client.create_webhook_secret(rotate=True)
    assert rotated.startswith("whsec_") and rotated != secret
    client.generate("hooked", duration=1, callback_url="http://127.0.0.1:9/hook")

    with httpx.Client(base_url=shared.url) as http:
        made = http.post(
            "/v1/keys",
            json={"test": True},
            headers={"Authorization": f"Bearer {shared.new_key().key}"},
        )
    with (
        Client(made.json()["data"]["key"], shared.url) as tester,
        pytest.raises(Forbidden) as refused,
    ):
        tester.create_webhook_secret()
    assert (refused.value.status, refused.value.code) == (403, "FORBIDDEN")
    assert isinstance(refused.value, APIError)


def test_body_over_the_limit_is_payload_too_large(sqlite_server: Factory) -> None:
    server = sqlite_server(max_body_bytes=1024)
    with Client(server.new_key().key, server.url) as sdk, pytest.raises(PayloadTooLarge) as big:
        sdk.generate("x", images=[image_bytes((1, 2, 3), "PNG", size=(300, 300)) + b"\0" * 2048])
    assert (big.value.status, big.value.code) == (413, "PAYLOAD_TOO_LARGE")
    assert isinstance(big.value, InvalidRequest)


def test_failed_task_raises_task_failed_with_the_contract_sentence(client: Client) -> None:
    with (
        serve_files({"/fake.png": ("image/png", b"this is not an image at all")}) as host,
        pytest.raises(TaskFailed) as failed,
    ):
        client.run("bad image", images=[f"{host}/fake.png"], duration=1, poll_interval=0.05)
    assert failed.value.error_message == "File type not supported"
    assert failed.value.task.status == "failed" and failed.value.task.failed
    assert failed.value.task.consumed_credits == 0  # refunded
    with pytest.raises(TaskFailed):
        client.download(failed.value.task.task_id, ".")


def test_refused_connection_is_an_api_connection_error() -> None:
    with (
        Client("imk_x", f"http://127.0.0.1:{free_port()}", max_retries=0) as sdk,
        pytest.raises(APIConnectionError) as refused,
    ):
        sdk.status("task_x")
    assert isinstance(refused.value, ConnectionError)
    assert not isinstance(refused.value, APITimeoutError)


def test_silent_server_is_an_api_timeout_error() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with (
            Client("imk_x", url, timeout=0.2, max_retries=0) as sdk,
            pytest.raises(APITimeoutError) as slow,
        ):
            sdk.status("task_x")
    assert isinstance(slow.value, TimeoutError) and isinstance(slow.value, APIConnectionError)


# -- retries -----------------------------------------------------------------


@pytest.mark.alone
def test_rate_limited_answers_are_waited_out_then_the_call_succeeds(
    shared: RunningServer,
) -> None:
    def rule(seen: Seen, number: int) -> Reply | None:
        limited = envelope(429, "RATE_LIMITED", "Rate limit of 100 requests per minute exceeded")
        if number == 0:
            return Reply(429, limited, {"Retry-After": "1"})
        if number == 1:  # no Retry-After: the window's reset time says how long
            return Reply(429, limited, {"X-RateLimit-Reset": str(int(time.time()) + 1)})
        return None

    proxy = FaultProxy(shared.url, rule)
    with proxy.running() as url, Client(shared.new_key().key, url) as sdk:
        started = time.monotonic()
        task_id = sdk.generate("patience", duration=1)
        elapsed = time.monotonic() - started
    assert task_id.startswith("task_")
    assert elapsed >= 0.9
    posts = [seen for seen in proxy.seen if seen.method == "POST"]
    assert [seen.status for seen in posts] == [429, 429, 200]
    assert len({seen.headers["Idempotency-Key"] for seen in posts}) == 1


@pytest.mark.alone
def test_rate_limit_outlasting_the_retries_surfaces_rate_limited(
    shared: RunningServer, sqlite_server: Factory
) -> None:
    always = envelope(429, "RATE_LIMITED", "Rate limit exceeded")
    proxy = FaultProxy(shared.url, lambda seen, n: Reply(429, always, {"Retry-After": "0"}))
    with (
        proxy.running() as url,
        Client("imk_x", url, max_retries=2) as sdk,
        pytest.raises(RateLimited) as exhausted,
    ):
        sdk.status("task_x")
    assert len(proxy.seen) == 3  # the call and two retries
    assert exhausted.value.retry_after == 0

    # The real limit's window is a minute: longer than this client will wait, so
    # it raises at once with the server's advice instead of sleeping.
    server = sqlite_server(rate_limit_free=1)
    with Client(server.new_key().key, server.url, max_retry_wait=5) as sdk:
        with pytest.raises(NotFound):
            sdk.status("task_x")
        started = time.monotonic()
        with pytest.raises(RateLimited) as limited:
            sdk.status("task_x")
    assert time.monotonic() - started < 1
    assert limited.value.retry_after is not None and 5 < limited.value.retry_after <= 60
    assert limited.value.reset_at is not None and limited.value.reset_at > datetime.now(UTC)
    assert (limited.value.status, limited.value.code) == (429, "RATE_LIMITED")


def test_lost_answer_to_a_submit_is_retried_and_charged_once(sqlite_server: Factory) -> None:
    server = sqlite_server()
    issued = server.new_key(credits=1000)
    lost: list[int] = []

    def rule(seen: Seen, number: int) -> Reply | None:
        # The server makes the task, then the answer is lost on the way back.
        if seen.method == "POST" and not lost:
            lost.append(number)
            return Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}, True)
        return None

    proxy = FaultProxy(server.url, rule)
    with proxy.running() as url, Client(issued.key, url) as sdk:
        task = sdk.run("charged once", ratio="1:1", duration=1, poll_interval=0.05)
    assert task.succeeded
    posts = [seen for seen in proxy.seen if seen.method == "POST"]
    assert [seen.status for seen in posts] == [502, 200]
    assert posts[0].headers["Idempotency-Key"] == posts[1].headers["Idempotency-Key"]
    balance, ledger_sum = run_db(
        server.settings, lambda db: balance_and_ledger(db, issued.account_id)
    )
    assert balance == ledger_sum == 1000 - 40


def test_server_errors_are_retried_then_raised_and_mapped_by_status(
    shared: RunningServer,
) -> None:
    def rule(seen: Seen, number: int) -> Reply | None:
        if seen.path.startswith("/v1/status?task_id=gone"):
            return Reply(404, b"<h1>Not Found</h1>", {"Content-Type": "text/html"})
        return Reply(503, b"upstream unavailable", {"Content-Type": "text/plain"})

    proxy = FaultProxy(shared.url, rule)
    with proxy.running() as url, Client("imk_x", url, max_retries=2) as sdk:
        with pytest.raises(ServerError) as failing:
            sdk.status("task_x")
        assert len(proxy.seen) == 3
        assert (failing.value.status, failing.value.code) == (503, None)
        assert failing.value.message == "upstream unavailable"

        # Other 4xx are never retried, and a body that is not the envelope still maps.
        with pytest.raises(NotFound) as missing:
            sdk.status("gone")
        assert len(proxy.seen) == 4
        assert (missing.value.status, missing.value.code) == (404, None)


def test_success_without_the_envelope_is_an_unexpected_response(shared: RunningServer) -> None:
    page = Reply(200, b"<html>a login page</html>", {"Content-Type": "text/html"})
    proxy = FaultProxy(shared.url, lambda seen, n: page)
    with (
        proxy.running() as url,
        Client("imk_x", url) as sdk,
        pytest.raises(UnexpectedResponse, match="base URL") as odd,
    ):
        sdk.status("task_x")
    assert odd.value.status == 200 and isinstance(odd.value, APIError)
    assert len(proxy.seen) == 1  # not retried: another try would get the same page


def tampered_status(server: RunningServer, key: str, task_id: str, *, as_id: str) -> Reply:
    """The server's real answer about a completed task, its `task_id` replaced:
    what a compromised server or a man in the middle could send."""
    with server.client(key) as http:
        answer = http.get("/v1/status", params={"task_id": task_id}).json()
    answer["data"]["task_id"] = as_id
    return Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})


TAMPERED_IDS = ["../../escaped/pwned", "{tmp_path}/absolute", "task_..", "task_a/b"]


@pytest.mark.parametrize("as_id", TAMPERED_IDS)
def test_download_never_writes_outside_its_directory_whatever_the_task_id(
    shared: RunningServer, client: Client, api_key: str, tmp_path: Path, as_id: str
) -> None:
    task = client.run("p", duration=1, poll_interval=0.05)
    as_id = as_id.format(tmp_path=tmp_path)
    forged = tampered_status(shared, api_key, task.task_id, as_id=as_id)
    proxy = FaultProxy(shared.url, lambda seen, n: forged if "/v1/status" in seen.path else None)
    out = tmp_path / "a" / "b" / "out"
    with proxy.running() as url, Client(api_key, url) as sdk:
        with pytest.raises(UnexpectedResponse, match="not a task id the API issues") as refused:
            sdk.download(task.task_id, out)
        with pytest.raises(UnexpectedResponse):
            asyncio.run(_download_async(api_key, url, task.task_id, out))
    assert isinstance(refused.value, APIError) and refused.value.status == 200
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


async def _download_async(api_key: str, url: str, task_id: str, out: Path) -> list[Path]:
    async with AsyncClient(api_key, url) as sdk:
        return await sdk.download(task_id, out)


def test_client_retries_until_the_server_comes_up(tmp_path: Path) -> None:
    first = start_server(make_settings(tmp_path / "late"))  # makes the schema and a key
    issued = first.new_key()
    first.stop()
    port = free_port()
    late: list[RunningServer] = []

    def start_later() -> None:
        time.sleep(0.3)
        late.append(_serve(first.settings, port))

    starter = threading.Thread(target=start_later, daemon=True)
    starter.start()
    try:
        with Client(issued.key, f"http://127.0.0.1:{port}", max_retries=6) as sdk:
            task_id = sdk.generate("eventually", duration=1)
            assert sdk.status(task_id).task_id == task_id
    finally:
        starter.join()
        for server in late:
            server.stop()


def _serve(settings: Settings, port: int) -> RunningServer:
    """Like `conftest.start_server`, on a chosen port and without waiting for it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return RunningServer(f"http://127.0.0.1:{port}", settings, server, thread)


# -- waiting -----------------------------------------------------------------


@pytest.mark.alone
def test_wait_times_out_with_the_last_task_and_polls_ever_more_gently(
    sqlite_server: Factory,
) -> None:
    server = sqlite_server(workers=0)  # nothing runs: the task stays pending
    with Client(server.new_key().key, server.url) as sdk:
        task_id = sdk.generate("never runs", duration=1)
        calls: list[Task] = []
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as late:
            sdk.wait(task_id, timeout=1.0, poll_interval=0.05, on_progress=calls.append)
        elapsed = time.monotonic() - started
        with pytest.raises(UsageError, match="pending"):
            sdk.download(task_id, ".")

    assert isinstance(late.value, TimeoutError) and isinstance(late.value, ImagineError)
    assert late.value.task.task_id == task_id and late.value.task.status == "pending"
    assert 1.0 <= elapsed < 2.0
    assert len(calls) == 1  # nothing changed after the first sight
    # A fixed 50 ms interval would poll ~20 times in that second; back-off polls far fewer.
    rate = late.value.task.rate_limit
    assert rate is not None
    polls = rate.limit - rate.remaining - 1  # every /v1 request counts; one was the submit
    assert 3 <= polls <= 10


# -- packaging and docs ------------------------------------------------------


SERVER_SIDE = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "pydantic",
    "uvicorn",
    "av",
    "PIL",
    "numpy",
    "limits",
    "typer",
)  # not rich: httpx itself imports it when it is installed


def test_sdk_imports_nothing_of_the_server() -> None:
    probe = (
        "import sys, imagine.client\n"
        f"heavy = {SERVER_SIDE!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or (m.startswith('imagine.') and not m.startswith('imagine.client')))\n"
        "print(','.join(bad))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert found.stdout.strip() == ""

    # And statically: the only first-party imports are the SDK's own (and the version).
    for module in (ROOT / "src" / "imagine" / "client").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("imagine"):
                    assert name == "imagine" or name.startswith("imagine.client"), (module, name)


def test_docs_examples_run_as_written(
    shared: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    text = (ROOT / "docs" / "sdk.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 5
    monkeypatch.setenv("IMAGINE_API_KEY", shared.new_key(credits=2000).key)
    monkeypatch.setenv("IMAGINE_BASE_URL", shared.url)
    monkeypatch.chdir(tmp_path)
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/sdk.md example {number + 1}", "exec"), {"__name__": "__main__"})
    videos = sorted(tmp_path.rglob("*.mp4"))
    assert videos
    for video in videos:
        assert probe_mp4(video).codec == "h264"
    assert "Traceback" not in capsys.readouterr().out
