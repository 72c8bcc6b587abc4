"""The `xai` engine against a local fake of xAI's Video gRPC service.

The fake (tests/fakes/xai_fake.py) is built from the SDK's own generated
servicer and serves real MP4s over HTTP; the engine reaches it through its
normal settings (`IMAGINE_XAI_API_HOST` + `IMAGINE_XAI_INSECURE`). Most tests
go through a real Imagine server end to end: submit, poll /v1/status, check
the request xAI received, the stored video, and the credits. Every failure
path must end in one of the contract's four sentences, fully refunded, and
with exactly one upstream start (a second start would be billed twice).
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import grpc
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from xai_sdk.proto import video_pb2

from imagine.accounts.service import IssuedKey
from imagine.db.database import Database
from imagine.db.models import ModerationRefusal, Task
from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.preview import PreviewEngine
from imagine.engines.registry import choose_engine, create_engine
from imagine.engines.xai import errors
from imagine.engines.xai.engine import XaiConfig, XaiEngine
from imagine.engines.xai.errors import Phase, Upstream
from imagine.engines.xai.mapping import STYLE_HINTS, build_request, fit_images, styled_prompt
from imagine.errors import InvalidRequest
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.media.images import InputImage
from imagine.media.video import probe_mp4
from imagine.settings import SettingsError, load_settings
from imagine.tasks.schemas import GenerateBody, validate_generation

from conftest import RunningServer
from fakes.xai_fake import API_KEY, FakeXai, Script, Step, mp4_with_audio, running_fake
from helpers import balance_and_ledger, image_bytes, run_db, wait_for_task

INAPPROPRIATE = FailureReason.INAPPROPRIATE.value
FILE_TYPE = FailureReason.FILE_TYPE.value
NETWORK = FailureReason.NETWORK.value
BUILD_FAILED = FailureReason.BUILD_FAILED.value
SECRET = "upstream-internal-detail-7731"  # must reach the log only, never the client
Code = grpc.StatusCode


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: these tests exercise the engine; both databases are covered elsewhere."""
    return f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"


@pytest.fixture(scope="module")
def video() -> bytes:
    return mp4_with_audio()


@pytest.fixture
def fake(video: bytes) -> Iterator[FakeXai]:
    yield from running_fake(video)


@pytest.fixture
def xai_server(
    server_factory: Any, fake: FakeXai, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., RunningServer]:
    """Start an Imagine server whose xai engine talks to the fake."""
    monkeypatch.setenv("XAI_API_KEY", API_KEY)

    def start(**overrides: Any) -> RunningServer:
        settings: dict[str, Any] = {
            "engine": "xai",
            "xai_api_host": fake.target,
            "xai_insecure": True,
            "xai_poll_interval": 0.02,
            "xai_poll_max_interval": 0.05,
            "xai_timeout_seconds": 20,
        }
        settings.update(overrides)
        return server_factory(**settings)  # type: ignore[no-any-return]

    return start


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def submit(server: RunningServer, body: dict[str, Any]) -> tuple[dict[str, Any], IssuedKey]:
    issued = server.new_key(credits=1000)
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json=body)
        assert answer.status_code == 200, answer.text
        data = wait_for_task(client, answer.json()["data"]["task_id"], timeout=30)
    return data, issued


def balance(server: RunningServer, issued: IssuedKey) -> tuple[int, int]:
    async def read(db: Database) -> tuple[int, int]:
        return await balance_and_ledger(db, issued.account_id)

    return run_db(server.settings, read)


def task_attempts(server: RunningServer, task_id: str) -> int:
    async def read(db: Database) -> int:
        async with db.read() as session:
            return int(await session.scalar(select(Task.attempts).where(Task.id == task_id)) or 0)

    return run_db(server.settings, read)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------
# End to end: what xAI receives, what the client gets


def test_text_to_video_maps_the_request_and_keeps_the_audio(
    xai_server: Callable[..., RunningServer], fake: FakeXai, tmp_path: Path
) -> None:
    server = xai_server(cost_xai=25)
    body = {"mode": "fun", "prompt": "a red fox in snow", "ratio": "9:16", "duration": 7}
    data, issued = submit(server, {**body, "resolution": "1080p", "seed": 42})
    assert data["status"] == "completed", data
    assert data["engine"] == "xai"
    assert data["progress"] == 100
    assert data["consumed_credits"] == 25  # IMAGINE_COST_XAI, not the default 40
    assert balance(server, issued) == (975, 975)

    [start] = fake.starts
    assert start.prompt == f"a red fox in snow\n\n{STYLE_HINTS['fun']}"
    assert start.model == "grok-imagine-video"
    assert start.duration == 7  # always sent: xAI's default is 8
    assert start.HasField("duration")
    assert start.aspect_ratio == video_pb2.VideoAspectRatio.Value("VIDEO_ASPECT_RATIO_9_16")
    assert start.resolution == video_pb2.VideoResolution.Value("VIDEO_RESOLUTION_1080P")
    assert not start.HasField("image") and len(start.reference_images) == 0
    assert fake.metadata[0]["authorization"] == f"Bearer {API_KEY}"

    with server.client() as client:
        answer = client.get(data["response"][0])
    assert answer.status_code == 200
    stored = tmp_path / "stored.mp4"
    stored.write_bytes(answer.content)
    info = probe_mp4(stored)
    assert info.codec == "h264" and info.frames == 12
    with av.open(str(stored)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]


def test_one_image_is_image_to_video_and_custom_mode_is_untouched(
    xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    server = xai_server()
    image = data_url(image_bytes((200, 30, 30)))
    data, _ = submit(
        server, {"mode": "custom", "prompt": "it starts to rain", "images": image, "ratio": "1:1"}
    )
    assert data["status"] == "completed", data
    [start] = fake.starts
    assert start.prompt == "it starts to rain"
    assert start.image.image_url == image  # the very bytes the client sent
    assert len(start.reference_images) == 0
    assert start.duration == 6  # our default, sent explicitly


def test_several_images_are_reference_images_capped_at_ten_seconds(
    xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    server = xai_server()
    images = [
        data_url(image_bytes((20, 200, 20))),
        data_url(image_bytes((9, 9, 9), "JPEG"), "image/jpeg"),
    ]
    data, _ = submit(server, {"prompt": "two friends", "images": images, "duration": 10})
    assert data["status"] == "completed", data
    [start] = fake.starts
    assert [ref.image_url for ref in start.reference_images] == images
    assert not start.HasField("image")

    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        refused = client.post(
            "/v1/generate", json={"prompt": "two friends", "images": images, "duration": 11}
        )
    assert refused.status_code == 400
    assert "at most 10" in refused.json()["message"]
    assert balance(server, issued) == (100, 100)
    assert len(fake.starts) == 1


def test_progress_from_upstream_is_visible_while_it_generates(
    xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    release = threading.Event()
    fake.script = Script(polls=[Step(progress=40, until=release), Step("DONE")])
    server = xai_server()
    issued = server.new_key()
    with server.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "slow"}).json()["data"]["task_id"]
        deadline = time.monotonic() + 10
        while True:
            seen = client.get("/v1/status", params={"task_id": task_id}).json()["data"]
            if seen["progress"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        release.set()
        data = wait_for_task(client, task_id)
    assert seen["status"] == "processing"
    assert 30 <= seen["progress"] <= 50  # xAI's 40 %, scaled into the generation share
    assert data["status"] == "completed" and data["progress"] == 100


def test_transient_poll_and_download_errors_are_retried_without_restarting(
    xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    fake.files.flaky_left = 2
    fake.script = Script(
        polls=[
            Step(abort=(Code.UNAVAILABLE, "connection reset")),
            Step(abort=(Code.DEADLINE_EXCEEDED, "slow")),
            Step(abort=(Code.INTERNAL, "hiccup")),
            Step(progress=50),
            Step("DONE", url=fake.video_url("flaky.mp4")),
        ]
    )
    server = xai_server(xai_poll_retries=3)
    data, issued = submit(server, {"prompt": "bumpy road"})
    assert data["status"] == "completed", data
    assert len(fake.starts) == 1
    assert len(fake.polls) == 5
    assert fake.files.requests.count("/flaky.mp4") == 3
    assert balance(server, issued) == (960, 960)


def test_start_is_retried_only_when_it_never_reached_xai(
    xai_server: Callable[..., RunningServer], video: bytes
) -> None:
    port = free_port()  # nothing listens yet: connection refused, nothing sent
    server = xai_server(xai_api_host=f"127.0.0.1:{port}")
    issued = server.new_key()
    with server.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "later"}).json()["data"]["task_id"]
        deadline = time.monotonic() + 10
        while task_attempts(server, task_id) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        waiting = client.get("/v1/status", params={"task_id": task_id}).json()["data"]
        assert waiting["status"] == "pending"  # handed back for another attempt
        late = FakeXai(video, port=port)
        try:
            data = wait_for_task(client, task_id, timeout=20)
        finally:
            late.stop()
    assert data["status"] == "completed", data
    assert task_attempts(server, task_id) == 2
    assert len(late.starts) == 1


# ---------------------------------------------------------------------------
# Every failure path: one of the four sentences, refunded, never started twice


@dataclass(frozen=True)
class FailureCase:
    script: Callable[[FakeXai], Script]
    sentence: str
    body: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    starts: int = 1


def _start_error(code: grpc.StatusCode, text: str) -> Callable[[FakeXai], Script]:
    return lambda _fake: Script(start_errors=[(code, f"{text} {SECRET}")])


def _polls(*steps: Step) -> Callable[[FakeXai], Script]:
    return lambda _fake: Script(polls=list(steps))


def _done_at(path: str) -> Callable[[FakeXai], Script]:
    return lambda fake: Script(polls=[Step("DONE", url=fake.video_url(path))])


_IMAGE = {"images": [data_url(image_bytes((1, 2, 3)))]}
FAILURES: dict[str, FailureCase] = {
    "moderation at a poll (INVALID_ARGUMENT)": FailureCase(
        _polls(
            Step(progress=30),
            Step(
                abort=(
                    Code.INVALID_ARGUMENT,
                    f"Generated video rejected by content moderation. {SECRET}",
                )
            ),
        ),
        INAPPROPRIATE,
    ),
    "moderation at the start (INVALID_ARGUMENT)": FailureCase(
        _start_error(Code.INVALID_ARGUMENT, "Prompt rejected by content moderation."), INAPPROPRIATE
    ),
    "moderation: DONE, respect_moderation=false, no URL": FailureCase(
        _polls(Step("DONE", url="", respect_moderation=False)), INAPPROPRIATE
    ),
    "moderation: FAILED with a moderation error": FailureCase(
        _polls(Step("FAILED", error=("content_moderation", f"Violates usage policy {SECRET}"))),
        INAPPROPRIATE,
    ),
    "image rejected at the start (INVALID_ARGUMENT)": FailureCase(
        _start_error(Code.INVALID_ARGUMENT, "Could not process the input image"), FILE_TYPE, _IMAGE
    ),
    "image rejected at a poll (INVALID_ARGUMENT)": FailureCase(
        _polls(Step(abort=(Code.INVALID_ARGUMENT, f"Image could not be decoded {SECRET}"))),
        FILE_TYPE,
        _IMAGE,
    ),
    "image rejected: FAILED about the image": FailureCase(
        _polls(Step("FAILED", error=("invalid_input", f"image is too small {SECRET}"))),
        FILE_TYPE,
        _IMAGE,
    ),
    "start UNAVAILABLE after sending: not retried": FailureCase(
        _start_error(Code.UNAVAILABLE, "upstream overloaded"), NETWORK
    ),
    "start DEADLINE_EXCEEDED: not retried": FailureCase(
        _start_error(Code.DEADLINE_EXCEEDED, "deadline"), NETWORK
    ),
    "start never sent, no attempts left": FailureCase(
        _polls(Step("DONE")), NETWORK, overrides={"max_attempts": 1}, starts=0
    ),
    "start rate limited, no attempts left": FailureCase(
        _start_error(Code.RESOURCE_EXHAUSTED, "rate limit"), NETWORK, overrides={"max_attempts": 1}
    ),
    "polls keep failing (UNAVAILABLE)": FailureCase(
        _polls(Step(abort=(Code.UNAVAILABLE, f"backend down {SECRET}"))),
        NETWORK,
        overrides={"xai_poll_retries": 2},
    ),
    "request EXPIRED upstream": FailureCase(_polls(Step(progress=10), Step("EXPIRED")), NETWORK),
    "upstream never finishes: time limit": FailureCase(
        _polls(Step(progress=5)), NETWORK, overrides={"xai_timeout_seconds": 0.6}
    ),
    "video URL expired (410)": FailureCase(_done_at("status/410"), NETWORK),
    "video URL expired (403)": FailureCase(_done_at("status/403"), NETWORK),
    "video URL gone (404)": FailureCase(_done_at("status/404"), NETWORK),
    "video host keeps failing (503)": FailureCase(_done_at("status/503"), NETWORK),
    "FAILED for another reason": FailureCase(
        _polls(Step("FAILED", error=("internal_error", f"worker crashed {SECRET}"))), BUILD_FAILED
    ),
    "DONE without a URL": FailureCase(_polls(Step("DONE", url="")), BUILD_FAILED),
    "start UNAUTHENTICATED (bad key)": FailureCase(
        _start_error(Code.UNAUTHENTICATED, "invalid API key"), BUILD_FAILED
    ),
    "poll NOT_FOUND": FailureCase(
        _polls(Step(abort=(Code.NOT_FOUND, f"no such request {SECRET}"))), BUILD_FAILED
    ),
    "the video does not decode": FailureCase(_done_at("junk.mp4"), BUILD_FAILED),
}


@pytest.mark.parametrize("case", list(FAILURES.values()), ids=list(FAILURES))
def test_failure_maps_to_a_sentence_and_refunds(
    case: FailureCase, xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    fake.script = case.script(fake)
    overrides = dict(case.overrides)
    if case.starts == 0:
        overrides["xai_api_host"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    server = xai_server(**overrides)
    data, issued = submit(server, {"prompt": "a test", **case.body})
    assert data["status"] == "failed", data
    assert data["error_message"] == case.sentence
    assert data["consumed_credits"] == 0
    assert data["response"] == []
    assert SECRET not in str(data)
    assert balance(server, issued) == (1000, 1000)
    assert len(fake.starts) == case.starts  # never a second, billed start
    # xAI's own moderation is recorded for the operator like the policy's refusals.
    recorded = engine_refusals(server, data["task_id"])
    assert recorded == ([("engine", "engine")] if case.sentence == INAPPROPRIATE else [])


def engine_refusals(server: RunningServer, task_id: str) -> list[tuple[str, str]]:
    async def read(db: Database) -> list[tuple[str, str]]:
        async with db.read() as session:
            rows = await session.execute(
                select(ModerationRefusal.stage, ModerationRefusal.check_name).where(
                    ModerationRefusal.task_id == task_id
                )
            )
            return [(row.stage, row.check_name) for row in rows]

    return run_db(server.settings, read)


# ---------------------------------------------------------------------------
# The engine alone: cancellation, limits before sending, progress estimate


def _job(**changes: Any) -> GenerationJob:
    fields: dict[str, Any] = {
        "task_id": "task_test",
        "prompt": "a lighthouse",
        "mode": "normal",
        "ratio": "16:9",
        "resolution": "480p",
        "width": 848,
        "height": 480,
        "duration": 6,
        "seed": None,
    }
    fields.update(changes)
    return GenerationJob(**fields)


def _engine(fake: FakeXai, **changes: Any) -> XaiEngine:
    config: dict[str, Any] = {
        "api_key": API_KEY,
        "api_host": fake.target,
        "insecure": True,
        "poll_interval": 0.02,
        "poll_max_interval": 0.05,
        "timeout": 20,
    }
    config.update(changes)
    return XaiEngine(XaiConfig(**config))


@pytest.mark.alone
async def test_cancel_stops_polling_at_once(fake: FakeXai, tmp_path: Path) -> None:
    fake.script = Script(polls=[Step(progress=10)])  # never finishes
    control = JobControl()
    running = asyncio.create_task(_engine(fake).generate(_job(), tmp_path, control))
    for _ in range(500):
        if len(fake.polls) >= 2:
            break
        await asyncio.sleep(0.01)
    control.cancel_event.set()
    asked = time.monotonic()
    with pytest.raises(Cancelled):
        await running
    assert time.monotonic() - asked < 0.5
    polls = len(fake.polls)
    await asyncio.sleep(0.2)
    assert len(fake.polls) == polls  # no polling after the cancel
    assert len(fake.starts) == 1
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


def test_a_server_stopped_mid_generation_resumes_it_after_restart(
    xai_server: Callable[..., RunningServer], fake: FakeXai
) -> None:
    release = threading.Event()
    fake.script = Script(polls=[Step(progress=10, until=release), Step("DONE")])
    first = xai_server(shutdown_grace_seconds=0.1)
    issued = first.new_key()
    with first.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "resume me", "duration": 1}).json()[
            "data"
        ]["task_id"]
        deadline = time.monotonic() + 20
        while not fake.polls:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    first.stop()  # graceful: the task goes back to the queue with its upstream id
    release.set()
    second = xai_server()
    with second.client(issued.key) as client:
        data = wait_for_task(client, task_id)
    assert data["status"] == "completed", data
    assert len(fake.starts) == 1  # billed upstream once


async def test_a_reclaimed_task_resumes_the_upstream_generation_instead_of_paying_again(
    fake: FakeXai, tmp_path: Path
) -> None:
    """A task stopped after its start (shutdown, lost lease) keeps the upstream
    request id; the next attempt polls that generation, no second start."""
    release = threading.Event()
    fake.script = Script(polls=[Step(progress=10, until=release), Step("DONE")])
    saved: dict[str, Any] = {}

    async def checkpoint(state: dict[str, Any]) -> None:
        saved.update(state)

    first = JobControl(checkpoint=checkpoint)
    running = asyncio.create_task(_engine(fake).generate(_job(), tmp_path, first))
    for _ in range(500):
        if fake.polls:
            break
        await asyncio.sleep(0.01)
    first.cancel_event.set()
    with pytest.raises(Cancelled):
        await running
    assert saved == {"xai_request_id": fake.polls[0]}

    release.set()
    paths = await _engine(fake).generate(_job(resume=saved), tmp_path, JobControl())
    assert paths == [tmp_path / "video.mp4"]
    assert len(fake.starts) == 1
    assert set(fake.polls) == {saved["xai_request_id"]}


async def test_time_estimate_reports_progress_when_xai_sends_none(
    fake: FakeXai, tmp_path: Path
) -> None:
    fake.script = Script(polls=[Step(), Step(), Step(), Step(), Step("DONE")])
    seen: list[float] = []
    engine = _engine(fake, poll_interval=0.05, poll_max_interval=0.05)
    paths = await engine.generate(_job(duration=1), tmp_path, JobControl(on_progress=seen.append))
    assert paths == [tmp_path / "video.mp4"]
    waiting = [p for p in seen if 0.02 < p < 0.9]
    assert len(waiting) >= 3 and waiting == sorted(waiting)
    assert seen[-1] == 1.0


async def test_images_too_large_for_one_message_are_refused_before_sending(
    fake: FakeXai, tmp_path: Path
) -> None:
    images = tuple(_noise(300, 300, seed) for seed in range(2))
    engine = _engine(fake, max_message_bytes=100_000)
    with pytest.raises(TaskFailure) as failure:
        await engine.generate(_job(images=images), tmp_path, JobControl())
    assert failure.value.reason is FailureReason.FILE_TYPE
    assert not failure.value.retryable
    assert fake.starts == []


def _noise(width: int, height: int, seed: int) -> InputImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return InputImage(buffer.getvalue(), "image/png", width, height)


# ---------------------------------------------------------------------------
# Mapping, the error table, settings


def test_mode_is_a_style_hint_and_normal_and_custom_are_untouched() -> None:
    assert styled_prompt("a cat", "normal") == "a cat"
    assert styled_prompt("a cat", "custom") == "a cat"
    assert styled_prompt("a cat", "fun") == f"a cat\n\n{STYLE_HINTS['fun']}"
    assert styled_prompt("a cat", "spicy") == f"a cat\n\n{STYLE_HINTS['spicy']}"


def test_images_over_the_message_budget_are_re_encoded_smaller() -> None:
    images = [_noise(400, 400, seed) for seed in range(2)]
    as_is = fit_images(images, 10_000_000)
    assert all(url.startswith("data:image/png;base64,") for url in as_is)
    budget = sum(len(url) for url in as_is) // 2
    shrunk = fit_images(images, budget)
    assert all(url.startswith("data:image/jpeg;base64,") for url in shrunk)
    assert sum(len(url) for url in shrunk) <= budget


def test_webp_is_sent_as_png_and_the_seed_is_not_sent() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 6, 7)).save(buffer, format="WEBP")
    webp = InputImage(buffer.getvalue(), "image/webp", 32, 32)
    request = build_request(_job(images=(webp,), seed=7), "grok-imagine-video")
    assert request.image_url is not None and request.image_url.startswith("data:image/png;")
    assert "seed" not in request.start_kwargs()


def test_reference_duration_cap_holds_even_past_submit() -> None:
    two = (_noise(8, 8, 1), _noise(8, 8, 2))
    with pytest.raises(TaskFailure) as failure:
        build_request(_job(images=two, duration=12), "grok-imagine-video")
    assert failure.value.reason is FailureReason.BUILD_FAILED


# (outcome, sentence, retryable): at least one case per row of the table.
TABLE_CASES: list[tuple[Upstream, FailureReason, bool]] = [
    (Upstream(Phase.POLL, "INVALID_ARGUMENT", "Generated video rejected by content moderation."),
     FailureReason.INAPPROPRIATE, False),
    (Upstream(Phase.START, "INVALID_ARGUMENT", "Input image rejected by moderation"),
     FailureReason.INAPPROPRIATE, False),
    (Upstream(Phase.RESULT, errors.DONE_MODERATED), FailureReason.INAPPROPRIATE, False),
    (Upstream(Phase.RESULT, errors.FAILED, "content_policy: nsfw"),
     FailureReason.INAPPROPRIATE, False),
    (Upstream(Phase.START, "INVALID_ARGUMENT", "bad image_url"), FailureReason.FILE_TYPE, False),
    (Upstream(Phase.RESULT, errors.FAILED, "bad_input: image too small"),
     FailureReason.FILE_TYPE, False),
    (Upstream(Phase.LOCAL, errors.IMAGES_TOO_LARGE), FailureReason.FILE_TYPE, False),
    (Upstream(Phase.START, "UNAVAILABLE", "failed to connect to all addresses; Connection refused"),
     FailureReason.NETWORK, True),
    (Upstream(Phase.START, "UNAVAILABLE", "errors resolving api.x.ai:443"),
     FailureReason.NETWORK, True),
    (Upstream(Phase.START, "RESOURCE_EXHAUSTED", "rate limited"), FailureReason.NETWORK, True),
    (Upstream(Phase.START, "UNAVAILABLE", "Socket closed"), FailureReason.NETWORK, False),
    (Upstream(Phase.START, "DEADLINE_EXCEEDED"), FailureReason.NETWORK, False),
    (Upstream(Phase.POLL, "UNAVAILABLE"), FailureReason.NETWORK, False),
    (Upstream(Phase.POLL, "RESOURCE_EXHAUSTED"), FailureReason.NETWORK, False),
    (Upstream(Phase.RESULT, errors.EXPIRED), FailureReason.NETWORK, False),
    (Upstream(Phase.POLL, errors.TIME_LIMIT), FailureReason.NETWORK, False),
    (Upstream(Phase.DOWNLOAD, errors.http(410)), FailureReason.NETWORK, False),
    (Upstream(Phase.DOWNLOAD, errors.http(502)), FailureReason.NETWORK, False),
    (Upstream(Phase.DOWNLOAD, errors.TRANSPORT), FailureReason.NETWORK, False),
    (Upstream(Phase.START, "INVALID_ARGUMENT", "duration must be at most 10"),
     FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.START, "UNAUTHENTICATED"), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.START, "PERMISSION_DENIED", "no credits"), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.POLL, "NOT_FOUND"), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.RESULT, errors.FAILED, "internal"), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.RESULT, errors.DONE_WITHOUT_URL), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.DOWNLOAD, errors.http(400)), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.DOWNLOAD, errors.UNDECODABLE), FailureReason.BUILD_FAILED, False),
    (Upstream(Phase.LOCAL, errors.CRASH), FailureReason.BUILD_FAILED, False),
]  # fmt: skip


@pytest.mark.parametrize(("outcome", "reason", "retryable"), TABLE_CASES)
def test_error_table_row(outcome: Upstream, reason: FailureReason, retryable: bool) -> None:
    failure = errors.classify(outcome, "ctx")
    assert (failure.reason, failure.retryable) == (reason, retryable)
    assert outcome.code in failure.detail  # the upstream facts are kept for the log


def test_every_row_of_the_error_table_is_exercised() -> None:
    used = {errors.find_rule(outcome) for outcome, _, _ in TABLE_CASES}
    assert used == {*errors.RULES, errors.FALLBACK}


def test_auto_engine_follows_the_xai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    assert str(choose_engine(load_settings(engine="auto"))) == (
        "preview (auto: XAI_API_KEY is not set)"
    )
    assert create_engine(load_settings(engine="auto")).name == "preview"
    with pytest.raises(SettingsError, match="XAI_API_KEY"):
        create_engine(load_settings(engine="xai"))

    monkeypatch.setenv("XAI_API_KEY", API_KEY)
    auto = load_settings(engine="auto")
    assert str(choose_engine(auto)) == "xai (auto: XAI_API_KEY is set)"
    assert create_engine(auto).name == "xai"
    assert choose_engine(load_settings(engine="preview")).name == "preview"


def test_xai_settings_are_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAI_API_KEY", API_KEY)
    monkeypatch.setenv("IMAGINE_XAI_API_HOST", "https://api.x.ai")
    with pytest.raises(SettingsError, match=r"IMAGINE_XAI_API_HOST: .*not a URL"):
        load_settings(engine="xai")
    monkeypatch.delenv("IMAGINE_XAI_API_HOST")
    with pytest.raises(SettingsError, match="IMAGINE_TASK_TIMEOUT_SECONDS"):
        load_settings(engine="xai", xai_timeout_seconds=600, task_timeout_seconds=300)
    settings = load_settings(cost_per_generation=40, cost_xai=90)
    assert (settings.cost_for("xai"), settings.cost_for("preview")) == (90, 40)


def test_1080p_is_offered_by_xai_only() -> None:
    settings = load_settings()
    body = GenerateBody(prompt="tall", resolution="1080p", ratio="9:16")
    assert validate_generation(body, settings, XaiEngine.capabilities).size == (1080, 1920)
    with pytest.raises(InvalidRequest, match="480p, 720p"):
        validate_generation(body, settings, PreviewEngine.capabilities)
