"""xAI's own Python SDK (`xai-sdk`, gRPC), unchanged, against a real server on
loopback: only its `api_key` (ours) and `api_host` (`localhost:<port>`) differ
from a program written for api.x.ai."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import xai_sdk
from xai_sdk.proto import deferred_pb2, video_pb2
from xai_sdk.video import VideoGenerationError

from imagine.compat import grpc_served
from imagine.compat.grpc_server import MAX_MESSAGE_BYTES
from imagine.db.models import Task
from imagine.settings import SettingsError, load_settings

from conftest import RunningServer, make_settings, start_server
from helpers import count_rows, data_url, decoded_mp4, image_bytes, noise_png
from loopback_doubles import Http2CutProxy
from processes import ImagineProcess, ServeProcess, free_port, free_ports

MODEL = "grok-imagine-video"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    port, grpc_port = free_ports(2)
    settings = make_settings(
        tmp_path_factory.mktemp("xai-sdk"), port=port, grpc_port=grpc_port, rate_limit_pro=4
    )
    running = start_server(settings)
    yield running
    running.stop()


def client_for(server: RunningServer, key: str, **options: Any) -> xai_sdk.Client:
    return xai_sdk.Client(api_key=key, api_host=f"localhost:{server.settings.grpc_port}", **options)


def ledger(server: RunningServer, key: str) -> list[tuple[str, int]]:
    with server.client(key) as api:
        entries = api.get("/v1/account/ledger").json()["data"]["entries"]
    return [(entry["kind"], entry["amount"]) for entry in entries]


def task_ids(server: RunningServer, key: str) -> list[str]:
    with server.client(key) as api:
        return [task["task_id"] for task in api.get("/v1/tasks").json()["data"]["tasks"]]


def test_generate_returns_a_url_whose_mp4_has_the_requested_size_and_length(
    server: RunningServer,
) -> None:
    key = server.new_key().key
    client = client_for(server, key)
    response = client.video.generate(
        prompt="a lighthouse at dusk",
        model=MODEL,
        duration=2,
        aspect_ratio="16:9",
        resolution="480p",
    )
    assert response.url.startswith(server.url + "/files/")
    assert response.duration == 2 and response.respect_moderation
    assert response.model == "preview"
    video = decoded_mp4(httpx.get(response.url).content)  # no key: the URL is signed
    assert (video.width, video.height) == (848, 480)
    assert video.duration_seconds == pytest.approx(2, abs=0.1)
    # An ordinary task: in /v1/tasks and /v1/status, charged once in the ledger.
    (task_id,) = task_ids(server, key)
    with server.client(key) as api:
        status = api.get("/v1/status", params={"task_id": task_id}).json()["data"]
    assert status["status"] == "completed" and status["request"]["ratio"] == "16:9"
    assert ledger(server, key) == [("debit", -40), ("grant", 1000)]


def test_an_image_url_as_a_data_url_is_animated(server: RunningServer) -> None:
    key = server.new_key().key
    picture = image_bytes((200, 30, 30), size=(96, 96))
    response = client_for(server, key).video.generate(
        prompt="the red square pulses",
        model=MODEL,
        image_url=data_url(picture),
        duration=1,
        aspect_ratio="1:1",
        resolution="480p",
    )
    video = decoded_mp4(httpx.get(response.url).content)
    assert (video.width, video.height) == (480, 480)
    (task_id,) = task_ids(server, key)
    with server.client(key) as api:
        request = api.get("/v1/status", params={"task_id": task_id}).json()["data"]["request"]
    assert request["images"][0].startswith("data:image/png;base64,…(")


def test_the_async_client_does_the_same(server: RunningServer) -> None:
    key = server.new_key().key

    async def generate() -> bytes:
        client = xai_sdk.AsyncClient(api_key=key, api_host=f"localhost:{server.settings.grpc_port}")
        response = await client.video.generate(
            prompt="rain on a window",
            model=MODEL,
            duration=1,
            aspect_ratio="9:16",
            resolution="480p",
        )
        async with httpx.AsyncClient() as http:
            return (await http.get(response.url)).content

    video = decoded_mp4(asyncio.run(generate()))
    assert (video.width, video.height) == (480, 848)
    assert video.duration_seconds == pytest.approx(1, abs=0.1)


def test_a_test_keys_forced_failure_raises_video_generation_error(server: RunningServer) -> None:
    with server.client(server.new_key().key) as api:
        test_key = api.post("/v1/keys", json={"test": True}).json()["data"]["key"]
    with pytest.raises(VideoGenerationError) as failure:
        client_for(server, test_key).video.generate(
            prompt="a storm [imagine-test-outcome=network]", model=MODEL, duration=1
        )
    assert failure.value.code == "network_error"
    assert failure.value.message == "Network error, please try again later."
    (task_id,) = task_ids(server, test_key)
    with server.client(test_key) as api:
        status = api.get("/v1/status", params={"task_id": task_id}).json()["data"]
    assert status["status"] == "failed" and status["test"] is True


def test_a_bad_key_is_unauthenticated(server: RunningServer) -> None:
    client = client_for(server, "imk_" + "x" * 38)
    with pytest.raises(grpc.RpcError) as refused:
        client.video.start(prompt="anything", model=MODEL, duration=1)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "Missing or invalid API key"


def test_a_key_without_credits_is_resource_exhausted_and_makes_no_task(
    server: RunningServer,
) -> None:
    key = server.new_key(credits=39).key
    with pytest.raises(grpc.RpcError) as refused:
        client_for(server, key).video.generate(prompt="anything", model=MODEL, duration=1)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Insufficient credits" in refused.value.details()
    assert task_ids(server, key) == []
    assert ledger(server, key) == [("grant", 39)]


def test_a_connection_lost_after_the_task_was_made_charges_once(server: RunningServer) -> None:
    """The proxy drops the connection as the server begins its answer to
    `GenerateVideo`: the task exists, the SDK sees `UNAVAILABLE` and retries."""
    key = server.new_key().key
    proxy = Http2CutProxy(server.settings.grpc_port)
    try:
        proxy.cut_next.set()
        client = xai_sdk.Client(api_key=key, api_host=f"localhost:{proxy.port}")
        response = client.video.generate(prompt="a kite", model=MODEL, duration=1)
        assert proxy.cuts == 1 and proxy.connections == 2  # one lost, one retried
    finally:
        proxy.close()
    (task_id,) = task_ids(server, key)
    assert task_id in response.url
    assert ledger(server, key) == [("debit", -40), ("grant", 1000)]


def test_the_same_request_made_again_on_purpose_is_a_new_task(server: RunningServer) -> None:
    key = server.new_key().key
    client = client_for(server, key)
    first = client.video.start(prompt="twice", model=MODEL, duration=1)
    second = client.video.start(prompt="twice", model=MODEL, duration=1)
    assert first.request_id != second.request_id
    assert sorted(task_ids(server, key)) == sorted([first.request_id, second.request_id])


def test_idle_keepalive_pings_keep_the_connection(server: RunningServer) -> None:
    """The SDK pings idle connections every 30 s; this client pings every 2 s,
    which gRPC's default server answers with GOAWAY too_many_pings (the client
    then reconnects: a second connection through the proxy)."""
    key = server.new_key().key
    proxy = Http2CutProxy(server.settings.grpc_port)
    try:
        client = xai_sdk.Client(
            api_key=key,
            api_host=f"localhost:{proxy.port}",
            channel_options=[("grpc.keepalive_time_ms", 2000)],
        )
        first = client.video.start(prompt="keep alive", model=MODEL, duration=1)
        time.sleep(6.5)  # idle: three pings
        client.video.get(first.request_id)
        assert proxy.connections == 1
    finally:
        proxy.close()


def test_a_message_above_grpcs_default_4_mib_is_accepted(server: RunningServer) -> None:
    key = server.new_key().key
    picture = noise_png((1400, 1100))
    assert 5 * 2**20 < len(picture) * 4 / 3 < MAX_MESSAGE_BYTES
    started = client_for(server, key).video.start(
        prompt="static", model=MODEL, image_url=data_url(picture), duration=1
    )
    assert task_ids(server, key) == [started.request_id]


@pytest.mark.parametrize(
    ("arguments", "details"),
    [
        (
            {"duration": 16},
            "Invalid request: The duration parameter must be an integer from 1 to 15",
        ),
        (
            {"duration": 1, "resolution": "1080p"},
            "Invalid request: The resolution parameter must be one of: 480p, 720p",
        ),
        (
            {"duration": 1, "video_url": "https://example.com/in.mp4"},
            "Invalid request: The video parameter is not supported: video editing is not available",
        ),
        (
            {"duration": 1, "model": "grok-imagine-video-9"},
            "Invalid request: The model parameter must be one of: grok-imagine-video, "
            "grok-imagine-video-1.5, preview",
        ),
        (
            {"duration": 1, "image_url": "data:image/png;base64,AAAA"},
            "Invalid request: images[0] is not a PNG, JPEG, WebP or GIF image "
            "(File type not supported)",
        ),
    ],
)
def test_refusals_are_invalid_argument_with_our_sentence(
    server: RunningServer, arguments: dict[str, Any], details: str
) -> None:
    key = server.new_key().key
    options = {"model": MODEL, **arguments}
    with pytest.raises(grpc.RpcError) as refused:
        client_for(server, key).video.start(prompt="anything", **options)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == details
    assert task_ids(server, key) == []


def test_unavailable_only_when_nothing_was_submitted(tmp_path: Path) -> None:
    """The one UNAVAILABLE: the shared rate-limit store is down, so the call is
    refused at admission. The SDK retries it (five attempts); no task exists."""
    down = start_server(
        make_settings(tmp_path, grpc_port=free_port(), redis_url="redis://127.0.0.1:1/0")
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            client_for(down, down.new_key().key).video.start(
                prompt="anything", model=MODEL, duration=1
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert count_rows(down.settings, Task) == 0
    finally:
        down.stop()


def test_unknown_ids_are_not_found_and_extending_is_unimplemented(server: RunningServer) -> None:
    client = client_for(server, server.new_key().key)
    with pytest.raises(grpc.RpcError) as unknown:
        client.video.get("task_" + "0" * 24)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as extend:
        client.video.extend(prompt="more", model=MODEL, video_url="https://example.com/v.mp4")
    assert extend.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ExtendVideo is not supported" in extend.value.details()


def test_another_accounts_request_is_not_found(server: RunningServer) -> None:
    started = client_for(server, server.new_key().key).video.start(
        prompt="mine", model=MODEL, duration=1
    )
    with pytest.raises(grpc.RpcError) as hidden:
        client_for(server, server.new_key().key).video.get(started.request_id)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_call_counts_against_the_plans_limit(server: RunningServer) -> None:
    key = server.new_key(plan="pro").key  # this server allows pro accounts 4 requests a minute
    client = client_for(server, key)
    started = client.video.start(prompt="counted", model=MODEL, duration=1)
    stub = client.video._stub  # the SDK's own stub, to read the trailing metadata
    request = video_pb2.GetDeferredVideoRequest(request_id=started.request_id)
    _answer, call = stub.GetDeferredVideo.with_call(request)
    limits = dict(call.trailing_metadata())
    assert limits["x-ratelimit-limit"] == "4" and limits["x-ratelimit-remaining"] == "2"
    with server.client(key) as api:
        assert api.get("/v1/account").status_code == 200  # HTTP shares the window
    client.video.get(started.request_id)
    with pytest.raises(grpc.RpcError) as limited:
        client.video.get(started.request_id)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.value.details() == "Rate limit of 4 requests per minute exceeded"
    assert int(dict(limited.value.trailing_metadata())["retry-after"]) > 0


def test_imagine_serve_without_workers_serves_grpc_on_its_port(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    grpc_port = free_port()
    serving = ServeProcess(
        tmp_path / "data", "--no-workers", env={"IMAGINE_GRPC_PORT": str(grpc_port)}
    )
    processes.append(serving)
    serving.wait_for_output("Imagine serving on")
    output = serving.output()
    key = re.search(r"API key \(shown once, keep it\): (imk_\w+)", output)
    target = re.search(r"xai_sdk\.Client\(api_host='([^']+)'", output)
    assert key is not None and target is not None, output
    assert target.group(1) == f"localhost:{grpc_port}"
    client = xai_sdk.Client(api_key=key.group(1), api_host=target.group(1))
    started = client.video.start(prompt="queued", model=MODEL, duration=1)
    answer = client.video.get(started.request_id)
    assert answer.status == deferred_pb2.DeferredStatus.PENDING  # no workers here
    with httpx.Client(base_url=serving.url) as api:
        status = api.get(
            "/v1/status",
            params={"task_id": started.request_id},
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
    assert status.json()["data"]["status"] == "pending"
    serving.terminate()  # the gRPC server stops with the app, cleanly
    assert "Application shutdown complete" in serving.output()
    assert "Traceback" not in serving.output()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", grpc_port), timeout=5)


def test_an_explicit_grpc_port_without_xai_sdk_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "xai_sdk" else real_find_spec(name, *args),
    )
    assert not grpc_served(make_settings(tmp_path))  # off in tests by default
    assert not grpc_served(load_settings(data_dir=tmp_path))  # the default port: a warning
    with pytest.raises(SettingsError, match="IMAGINE_GRPC_PORT: the gRPC face needs xai-sdk"):
        grpc_served(load_settings(data_dir=tmp_path, grpc_port=50051))
