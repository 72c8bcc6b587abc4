"""A preview video plays and seeks in a real browser (Debian's Chromium)."""

from __future__ import annotations

from playwright.sync_api import sync_playwright

from browser import launch, require_chromium
from conftest import RunningServer
from helpers import wait_for_task

require_chromium()


def test_preview_video_plays_and_seeks_in_chromium(server: RunningServer) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        task_id = client.post(
            "/v1/generate", json={"prompt": "play me in a browser", "duration": 3, "ratio": "16:9"}
        ).json()["data"]["task_id"]
        url = wait_for_task(client, task_id)["response"][0]

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/healthz")  # same origin as the video
            result = page.evaluate(
                """async (url) => {
                    const video = document.createElement("video");
                    video.muted = true;
                    video.src = url;
                    document.body.appendChild(video);
                    await new Promise((ok, fail) => {
                        video.onloadedmetadata = ok;
                        video.onerror = () => fail(new Error("error " + video.error?.code));
                    });
                    video.currentTime = 2.0;
                    await new Promise((ok) => { video.onseeked = ok; });
                    const seekedTo = video.currentTime;
                    await video.play();
                    await new Promise((ok) => setTimeout(ok, 300));
                    return {
                        width: video.videoWidth,
                        height: video.videoHeight,
                        duration: video.duration,
                        seekedTo,
                        playedTo: video.currentTime,
                        error: video.error && video.error.code,
                    };
                }""",
                url,
            )
        finally:
            browser.close()
    assert result["error"] is None
    assert (result["width"], result["height"]) == (848, 480)
    assert abs(result["duration"] - 3.0) < 0.1
    assert abs(result["seekedTo"] - 2.0) < 0.1
    assert result["playedTo"] > result["seekedTo"]
