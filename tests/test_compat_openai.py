"""OpenAI's Python client (`openai`, `client.videos`), unchanged, against a real
server on loopback: only `base_url` (`…/openai/v1`) and `api_key` (ours) differ
from a program written for OpenAI's videos API."""

from __future__ import annotations

import io
import time
import types
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import _base_client
from openai.types import Video
from PIL import Image

from conftest import RunningServer, make_settings, start_server
from helpers import decoded_mp4, image_bytes

# Every `client.videos` method is marked deprecated (OpenAI retired the API);
# that is the point of serving it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(make_settings(tmp_path_factory.mktemp("openai")))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """No workers: tasks stay queued. Pro accounts get 3 requests a minute here."""
    running = start_server(
        make_settings(tmp_path_factory.mktemp("openai-idle"), workers=0, rate_limit_pro=3)
    )
    yield running
    running.stop()


def openai_client(server: RunningServer, key: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=key, **options)


def made(client: openai.OpenAI, **fields: Any) -> Video:
    """`create_and_poll`, polling briskly. (`fields` are loosely typed: the SDK's
    types list only OpenAI's sizes and lengths, and this server serves others.)"""
    return client.videos.create_and_poll(poll_interval_ms=100, **fields)


def ledger_kinds(server: RunningServer, key: str) -> list[str]:
    with server.client(key) as api:
        return [entry["kind"] for entry in api.get("/v1/account/ledger").json()["data"]["entries"]]


def test_create_and_poll_then_download_the_video_and_its_thumbnail(server: RunningServer) -> None:
    key = server.new_key().key
    client = openai_client(server, key)
    video = made(client, prompt="a paper boat on a stream", seconds="2", size="848x480")
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert (video.seconds, video.size, video.model) == ("2", "848x480", "preview")
    assert video.prompt == "a paper boat on a stream" and video.object == "video"
    assert video.completed_at is not None and video.completed_at >= video.created_at
    content = client.videos.download_content(video.id)
    decoded = decoded_mp4(content.content)
    assert (decoded.width, decoded.height) == (848, 480)
    assert decoded.duration_seconds == pytest.approx(2, abs=0.1)
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    with Image.open(io.BytesIO(thumbnail.content)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (848, 480))
    # The same task, through our API and xAI's.
    with server.client(key) as api:
        status = api.get("/v1/status", params={"task_id": video.id}).json()["data"]
        xai = api.get(f"/v1/videos/{video.id}").json()
    assert status["status"] == "completed" and status["request"]["ratio"] == "16:9"
    assert xai["status"] == "done"
    with server.client(follow_redirects=False) as browser:  # and in the console
        assert browser.post("/signin", data={"api_key": key}).status_code == 303
        assert video.id in browser.get("/tasks").text
        assert "a paper boat on a stream" in browser.get(f"/tasks/{video.id}").text


def test_an_input_reference_image_is_uploaded_and_animated(server: RunningServer) -> None:
    key = server.new_key().key
    picture = image_bytes((250, 200, 0), size=(120, 90))
    video = made(
        openai_client(server, key),
        prompt="the yellow card",
        seconds="1",
        size="640x480",
        input_reference=("card.png", picture, "image/png"),
    )
    assert video.status == "completed", video.error
    with server.client(key) as api:
        request = api.get("/v1/status", params={"task_id": video.id}).json()["data"]["request"]
    assert request["images"][0].startswith("data:image/png;base64,…(")


def test_a_test_keys_forced_failure_is_a_failed_video(server: RunningServer) -> None:
    with server.client(server.new_key().key) as api:
        test_key = api.post("/v1/keys", json={"test": True}).json()["data"]["key"]
    video = made(
        openai_client(server, test_key),
        prompt="never [imagine-test-outcome=build-failed]",
        seconds="1",
        size="480x480",
    )
    assert video.status == "failed" and video.error is not None
    assert (video.error.code, video.error.message) == (
        "internal_error",
        "grok imagine build failed",
    )


def test_list_pages_through_25_videos_without_gaps(idle: RunningServer) -> None:
    key = idle.new_key(plan="enterprise", credits=10_000).key
    with idle.client(key) as api:
        made = [
            api.post("/v1/generate", json={"prompt": f"video {n}", "duration": 1}).json()["data"][
                "task_id"
            ]
            for n in range(25)
        ]
    client = openai_client(idle, key)
    first = client.videos.list(limit=10)
    assert len(first.data) == 10 and first.has_more
    newest_first = [video.id for video in client.videos.list(limit=10)]  # the SDK pages on
    assert newest_first == made[::-1]
    oldest_first = [video.id for video in client.videos.list(limit=7, order="asc")]
    assert oldest_first == made
    assert {video.status for video in first.data} == {"queued"}


def test_another_accounts_video_is_not_found(server: RunningServer) -> None:
    fields: dict[str, Any] = {"prompt": "mine", "seconds": "1", "size": "480x480"}
    mine = openai_client(server, server.new_key().key).videos.create(**fields)
    with pytest.raises(openai.NotFoundError) as hidden:
        openai_client(server, server.new_key().key).videos.retrieve(mine.id)
    assert hidden.value.code == "not_found"
    assert hidden.value.body == {
        "message": "Task not found",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_delete_removes_the_video_everywhere_and_keeps_the_ledger(server: RunningServer) -> None:
    key = server.new_key().key
    client = openai_client(server, key)
    video = made(client, prompt="gone soon", seconds="1", size="480x480")
    with server.client(key) as api:
        file_url = api.get("/v1/status", params={"task_id": video.id}).json()["data"]["response"][0]
    deleted = client.videos.delete(video.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (video.id, "video.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.delete(video.id)
    assert [v.id for v in client.videos.list()] == []
    with server.client(key) as api:
        assert api.get("/v1/status", params={"task_id": video.id}).status_code == 404
        assert api.get(file_url).status_code == 404  # the file itself is gone
    assert ledger_kinds(server, key) == ["debit", "grant"]


def test_deleting_a_queued_video_cancels_and_refunds_it(idle: RunningServer) -> None:
    key = idle.new_key().key
    client = openai_client(idle, key)
    fields: dict[str, Any] = {"prompt": "never mind", "seconds": "1", "size": "480x480"}
    video = client.videos.create(**fields)
    assert video.status == "queued"
    client.videos.delete(video.id)
    assert ledger_kinds(idle, key) == ["refund", "debit", "grant"]
    with idle.client(key) as api:
        assert api.get("/v1/account").json()["data"]["balance"] == 1000


def test_an_idempotency_key_makes_a_create_safe_to_retry(idle: RunningServer) -> None:
    key = idle.new_key().key
    client = openai_client(idle, key)
    fields: dict[str, Any] = {"prompt": "once", "seconds": "1", "size": "480x480"}
    once = {"Idempotency-Key": "create-once"}
    first = client.videos.create(**fields, extra_headers=once)
    again = client.videos.create(**fields, extra_headers=once)
    assert first.id == again.id
    assert ledger_kinds(idle, key) == ["debit", "grant"]


def test_429_surfaces_as_rate_limit_error_after_the_sdks_retries(
    idle: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK waits `Retry-After` between its two retries; the waits are recorded
    here instead of slept (the client's logic is otherwise untouched)."""
    waits: list[float] = []
    clock = types.SimpleNamespace(**vars(time))
    clock.sleep = waits.append
    monkeypatch.setattr(_base_client, "time", clock)
    key = idle.new_key(plan="pro").key  # 3 requests a minute on this server
    client = openai_client(idle, key)
    for _ in range(3):
        assert client.videos.list().data == []
    with pytest.raises(openai.RateLimitError) as limited:
        client.videos.list()
    assert len(waits) == 2 and all(0 < wait <= 60 for wait in waits)
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "requests"
    assert limited.value.message == "Error code: 429 - Rate limit of 3 requests per minute exceeded"
    headers = limited.value.response.headers
    assert headers["x-ratelimit-remaining"] == "0" and float(headers["retry-after"]) == waits[-1]


def test_no_credits_is_insufficient_quota_without_retries(
    idle: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    clock = types.SimpleNamespace(**vars(time))
    clock.sleep = waits.append
    monkeypatch.setattr(_base_client, "time", clock)
    key = idle.new_key(credits=0).key
    fields: dict[str, Any] = {"prompt": "x", "seconds": "1", "size": "480x480"}
    with pytest.raises(openai.RateLimitError) as refused:
        openai_client(idle, key).videos.create(**fields)
    assert waits == []  # x-should-retry: false, obeyed
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"
    with idle.client(key) as api:
        assert api.get("/v1/tasks").json()["data"]["tasks"] == []


@pytest.mark.parametrize(
    ("options", "param", "message"),
    [
        (
            {"size": "1024x1792"},
            "size",
            "Invalid request: The size parameter must be one of: 480x480, 848x480, 480x848, "
            "480x720, 720x480, 640x480, 480x640, 720x720, 1280x720, 720x1280, 720x1080, "
            "1080x720, 960x720, 720x960",
        ),
        (
            {"seconds": "16", "size": "480x480"},
            "seconds",
            "Invalid request: The seconds parameter must be a whole number from 1 to 15",
        ),
        (
            {"model": "sora-3", "size": "480x480"},
            "model",
            "Invalid request: The model parameter must be one of: sora-2, sora-2-pro, "
            "sora-2-2025-10-06, sora-2-pro-2025-10-06, sora-2-2025-12-08, preview",
        ),
        (
            {"input_reference": ("notes.txt", b"plain text", "text/plain"), "size": "480x480"},
            "input_reference",
            "Invalid request: images[0] media type 'application/octet-stream' is not an image",
        ),
    ],
)
def test_what_we_cannot_honour_is_refused_not_changed(
    idle: RunningServer, options: dict[str, Any], param: str, message: str
) -> None:
    key = idle.new_key().key
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(idle, key, max_retries=0).videos.create(prompt="x", **options)
    assert refused.value.param == param and refused.value.message == f"Error code: 400 - {message}"
    assert refused.value.type == "invalid_request_error"
    with idle.client(key) as api:
        assert api.get("/v1/tasks").json()["data"]["tasks"] == []


def test_errors_under_the_prefix_are_openais_shape(idle: RunningServer) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        openai_client(idle, "not-a-key").videos.list()
    assert refused.value.code == "invalid_api_key"
    with idle.client(idle.new_key().key) as api:
        unknown = api.get("/openai/v1/files")
        remix = api.post(f"/openai/v1/videos/task_{'0' * 24}/remix", json={"prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert remix.status_code == 400
    assert remix.json()["error"]["message"] == (
        "Invalid request: Remixing a video is not supported by this server"
    )
