"""xAI's REST video routes over plain HTTP, with the request bodies xAI documents:
`POST /v1/videos/generations` and `GET /v1/videos/{request_id}`, on our `/v1`
(the same keys, limits and error envelope)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import RunningServer, make_settings, start_server
from helpers import assert_error, data_url, decoded_mp4, image_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(make_settings(tmp_path_factory.mktemp("xai-rest")))
    yield running
    running.stop()


def poll(api: httpx.Client, request_id: str, timeout: float = 60) -> dict[str, Any]:
    """As xAI's docs poll: until the status is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        answer = api.get(f"/v1/videos/{request_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["status"] != "pending":
            return body
        assert set(body) == {"request_id", "status", "model", "progress"}
        assert 0 <= body["progress"] <= 100
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_text_to_video_as_xais_docs_send_it(server: RunningServer) -> None:
    key = server.new_key().key
    with server.client(key) as api:
        started = api.post(
            "/v1/videos/generations",
            json={
                "model": "grok-imagine-video",
                "prompt": "A cat playing with a ball of yarn",
                "duration": 2,
                "aspect_ratio": "4:3",
                "resolution": "480p",
            },
        )
        assert started.status_code == 200, started.text
        assert set(started.json()) == {"request_id"}
        assert started.headers["x-ratelimit-limit"] == "100"  # behind the /v1 gate
        request_id = started.json()["request_id"]
        done = poll(api, request_id)
        # The same task through our own API.
        status = api.get("/v1/status", params={"task_id": request_id}).json()["data"]
    assert done["status"] == "done" and done["model"] == "preview" and done["progress"] == 100
    assert done["video"]["duration"] == 2 and done["video"]["respect_moderation"] is True
    video = decoded_mp4(httpx.get(done["video"]["url"]).content)
    assert (video.width, video.height) == (640, 480)
    assert video.duration_seconds == pytest.approx(2, abs=0.1)
    assert status["status"] == "completed" and status["consumed_credits"] == 40


def test_image_and_reference_images(server: RunningServer) -> None:
    picture = data_url(image_bytes((10, 120, 200), size=(80, 80)))
    with server.client(server.new_key().key) as api:
        one = api.post(
            "/v1/videos/generations",
            json={"prompt": "the blue square", "duration": 1, "image": {"url": picture}},
        ).json()["request_id"]
        several = api.post(
            "/v1/videos/generations",
            json={
                "prompt": "blue, then red",
                "duration": 1,
                "reference_images": [{"url": picture}, {"url": picture}],
            },
        ).json()["request_id"]
        for request_id, count in ((one, 1), (several, 2)):
            assert poll(api, request_id)["status"] == "done"
            shown = api.get("/v1/status", params={"task_id": request_id}).json()["data"]
            assert len(shown["request"]["images"]) == count


def test_a_failure_is_http_200_with_status_failed_and_an_error(server: RunningServer) -> None:
    with server.client(server.new_key().key) as api:
        test_key = api.post("/v1/keys", json={"test": True}).json()["data"]["key"]
    with server.client(test_key) as api:
        request_id = api.post(
            "/v1/videos/generations",
            json={"prompt": "blocked"},
            headers={"Imagine-Test-Outcome": "moderation"},
        ).json()["request_id"]
        failed = poll(api, request_id)
    assert failed["status"] == "failed" and "video" not in failed
    assert failed["error"] == {
        "code": "moderation_blocked",
        "message": "Inappropriate content, please try another prompt.",
    }


def test_a_cancelled_task_reads_as_expired(server: RunningServer) -> None:
    idle = start_server(make_settings(server.settings.data_dir.parent / "idle", workers=0))
    try:
        with idle.client(idle.new_key().key) as api:
            request_id = api.post("/v1/videos/generations", json={"prompt": "x"}).json()[
                "request_id"
            ]
            assert api.get(f"/v1/videos/{request_id}").json()["status"] == "pending"
            assert api.post("/v1/cancel", json={"task_id": request_id}).status_code == 200
            assert api.get(f"/v1/videos/{request_id}").json()["status"] == "expired"
    finally:
        idle.stop()


def test_an_idempotency_key_makes_a_retry_charge_once(server: RunningServer) -> None:
    with server.client(server.new_key().key) as api:
        body = {"prompt": "once", "duration": 1}
        headers = {"Idempotency-Key": "retry-me-1"}
        first = api.post("/v1/videos/generations", json=body, headers=headers).json()
        again = api.post("/v1/videos/generations", json=body, headers=headers).json()
        assert first == again
        other = api.post(
            "/v1/videos/generations", json={**body, "prompt": "twice"}, headers=headers
        )
        assert_error(other, 409, "IDEMPOTENCY_CONFLICT")
        entries = api.get("/v1/account/ledger").json()["data"]["entries"]
    assert [entry["kind"] for entry in entries] == ["debit", "grant"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"duration": 1}, "Invalid request: The prompt parameter is required"),
        (
            {"prompt": "x", "size": "1280x720"},
            "Invalid request: Unknown parameter: size",
        ),
        (
            {"prompt": "x", "aspect_ratio": "21:9"},
            "Invalid request: The ratio parameter must be one of: 1:1, 16:9, 9:16, 2:3, 3:2, "
            "4:3, 3:4",
        ),
        (
            {"prompt": "x", "model": "grok-2-image"},
            "Invalid request: The model parameter must be one of: grok-imagine-video, "
            "grok-imagine-video-1.5, preview",
        ),
        (
            {
                "prompt": "x",
                "image": {"url": "https://a.example/1.png"},
                "reference_images": [{"url": "https://a.example/2.png"}],
            },
            "Invalid request: The image and reference_images parameters cannot be combined: "
            "send one image to animate, or reference images",
        ),
    ],
)
def test_refusals_use_our_envelope_and_create_nothing(
    server: RunningServer, body: dict[str, Any], message: str
) -> None:
    with server.client(server.new_key().key) as api:
        answer = api.post("/v1/videos/generations", json=body)
        assert assert_error(answer, 400, "INVALID_REQUEST")["message"] == message
        assert api.get("/v1/tasks").json()["data"]["tasks"] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "Invalid request: The request body is not valid JSON"),
        (b'{"prompt": 5}', "Invalid request: The prompt parameter must be a string"),
        (
            b'{"prompt": "a\\u0000b"}',
            "Invalid request: The prompt parameter must be valid Unicode text "
            "(no NUL characters or unpaired surrogates)",
        ),
        (
            b'{"prompt": "x", "duration": "6"}',
            "Invalid request: The duration parameter must be an integer",
        ),
        (
            b'{"prompt": "x", "image": "https://a.example/1.png"}',
            "Invalid request: The image parameter must be valid",
        ),
    ],
)
def test_malformed_bodies_are_400_envelopes(
    server: RunningServer, content: bytes, message: str
) -> None:
    """These routes are not in /openapi.json, so the schema fuzzer does not reach
    them: the shapes it would try are tried here."""
    with server.client(server.new_key().key) as api:
        answer = api.post(
            "/v1/videos/generations",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        assert assert_error(answer, 400, "INVALID_REQUEST")["message"] == message


def test_unknown_ids_other_accounts_and_missing_keys(server: RunningServer) -> None:
    with server.client(server.new_key().key) as mine:
        request_id = mine.post("/v1/videos/generations", json={"prompt": "mine"}).json()[
            "request_id"
        ]
    with server.client(server.new_key().key) as theirs:
        assert_error(theirs.get(f"/v1/videos/{request_id}"), 404, "NOT_FOUND")
        assert_error(theirs.get("/v1/videos/nothing-here"), 404, "NOT_FOUND")
    with server.client() as anonymous:
        assert_error(anonymous.get(f"/v1/videos/{request_id}"), 401, "UNAUTHORIZED")
        refused = anonymous.post("/v1/videos/generations", json={"prompt": "x"})
        assert_error(refused, 401, "UNAUTHORIZED")
