"""A client's whole journey through a real server: submit, poll, download, decode."""

from __future__ import annotations

import base64
from pathlib import Path

from imagine.media.video import probe_mp4

from conftest import RunningServer
from helpers import image_bytes, wait_for_task


def download(server: RunningServer, url: str, target: Path) -> Path:
    with server.client() as client:
        answer = client.get(url)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "video/mp4"
    target.write_bytes(answer.content)
    return target


def test_seed_text_example_produces_a_playable_mp4(server: RunningServer, tmp_path: Path) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        submitted = client.post(
            "/v1/generate",
            json={
                "mode": "fun",
                "prompt": "a beautiful landscape with mountains",
                "ratio": "1:1",
                "duration": 2,
            },
        )
        assert submitted.status_code == 200, submitted.text
        body = submitted.json()
        assert body["code"] == 200 and body["message"] == "success"
        task_id = body["data"]["task_id"]
        assert task_id.startswith("task_")

        data = wait_for_task(client, task_id)

    assert data["status"] == "completed", data
    assert data["consumed_credits"] == 40
    assert data["error_message"] is None
    assert data["request"] == {
        "mode": "fun",
        "prompt": "a beautiful landscape with mountains",
        "ratio": "1:1",
        "duration": 2,
        "resolution": "480p",
        "seed": None,
    }
    assert data["created_at"].endswith("Z")
    assert data["progress"] == 100
    assert len(data["response"]) == 1

    video = probe_mp4(download(server, data["response"][0], tmp_path / "out.mp4"))
    assert (video.width, video.height) == (480, 480)
    assert video.codec == "h264"
    assert abs(video.duration_seconds - 2.0) < 0.1


def test_image_to_video_uses_every_image(server: RunningServer, tmp_path: Path) -> None:
    issued = server.new_key()
    red = "data:image/png;base64," + base64.b64encode(image_bytes((220, 20, 20))).decode()
    blue = "data:image/jpeg;base64," + base64.b64encode(image_bytes((20, 20, 220), "JPEG")).decode()
    with server.client(issued.key) as client:
        submitted = client.post(
            "/v1/generate",
            json={"prompt": "two colours", "images": [red, blue], "ratio": "16:9", "duration": 2},
        )
        assert submitted.status_code == 200, submitted.text
        data = wait_for_task(client, submitted.json()["data"]["task_id"])
    assert data["status"] == "completed", data
    assert data["request"]["images"][0].startswith("data:image/png;base64,…")
    video = probe_mp4(download(server, data["response"][0], tmp_path / "i2v.mp4"))
    assert (video.width, video.height) == (848, 480)
    assert abs(video.duration_seconds - 2.0) < 0.1


def test_single_image_string_is_accepted(server: RunningServer) -> None:
    issued = server.new_key()
    one = "data:image/png;base64," + base64.b64encode(image_bytes((0, 200, 0))).decode()
    with server.client(issued.key) as client:
        submitted = client.post(
            "/v1/generate", json={"prompt": "green", "images": one, "duration": 1}
        )
        assert submitted.status_code == 200, submitted.text
        data = wait_for_task(client, submitted.json()["data"]["task_id"])
    assert data["status"] == "completed"
    assert len(data["request"]["images"]) == 1


def test_video_urls_support_range_requests_and_refuse_tampering(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "seek me", "duration": 1}).json()[
            "data"
        ]["task_id"]
        url = wait_for_task(client, task_id)["response"][0]
    with server.client() as anonymous:
        whole = anonymous.get(url)
        assert whole.status_code == 200
        assert whole.headers["accept-ranges"] == "bytes"
        part = anonymous.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"

        tampered = anonymous.get(url.replace("signature=", "signature=0"))
        assert tampered.status_code == 404
        assert tampered.json()["error"] == "NOT_FOUND"
        expired = anonymous.get(url.split("?")[0] + "?expires=1&signature=" + url.split("=")[-1])
        assert expired.status_code == 404


def test_same_inputs_give_the_same_video(server: RunningServer) -> None:
    issued = server.new_key()
    body = {"prompt": "repeatable", "seed": 7, "duration": 1, "ratio": "4:3"}
    with server.client(issued.key) as client:
        first = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        second = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        urls = [wait_for_task(client, t)["response"][0] for t in (first, second)]
        contents = [client.get(u).content for u in urls]
    assert first != second
    assert contents[0] == contents[1]
