"""Image URLs through the whole service: fetched by the worker, failures refunded,
unsafe targets refused before any connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import RunningServer
from helpers import balance_and_ledger, image_bytes, run_db, wait_for_task
from loopback_doubles import CountingListener

FILES = {
    "/photo.webp": ("image/webp", image_bytes((10, 120, 200), "WEBP")),
    "/photo.gif": ("image/gif", image_bytes((200, 120, 10), "GIF")),
    "/notes.txt": ("image/png", b"this is not an image at all"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = FILES.get(self.path)
        if found is None:
            self.send_error(404)
            return
        kind, payload = found
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_images_from_urls_are_fetched_and_animated(server: RunningServer, image_host: str) -> None:
    issued = server.new_key()
    with server.client(issued.key) as client:
        answer = client.post(
            "/v1/generate",
            json={
                "prompt": "from urls",
                "images": [f"{image_host}/photo.webp", f"{image_host}/photo.gif"],
                "duration": 1,
            },
        )
        data = wait_for_task(client, answer.json()["data"]["task_id"])
    assert data["status"] == "completed", data


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/notes.txt", "File type not supported"),
        ("/missing.png", "Network error, please try again later."),
    ],
)
def test_failed_image_fails_the_task_and_refunds_in_full(
    server: RunningServer, image_host: str, path: str, message: str
) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        answer = client.post(
            "/v1/generate", json={"prompt": "bad image", "images": [image_host + path]}
        )
        assert answer.status_code == 200
        data = wait_for_task(client, answer.json()["data"]["task_id"])
    assert data["status"] == "failed"
    assert data["error_message"] == message
    assert data["consumed_credits"] == 0
    assert data["response"] == []
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/a.png",
        "http://localhost:{port}/a.png",
        "http://[::ffff:127.0.0.1]:{port}/a.png",
        "http://10.0.0.1:{port}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::1]:{port}/a.png",
        "http://2130706433:{port}/a.png",
    ],
)
def test_private_image_urls_are_refused_at_submit_without_connecting(
    server_factory: Any, template: str
) -> None:
    server: RunningServer = server_factory(allow_private_urls=False)
    listener = CountingListener()
    try:
        issued = server.new_key(credits=100)
        with server.client(issued.key) as client:
            answer = client.post(
                "/v1/generate",
                json={"prompt": "ssrf", "images": [template.format(port=listener.port)]},
            )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "INVALID_REQUEST"
        assert "images[0]" in answer.json()["message"]
    finally:
        listener.close()
    assert listener.connections == 0
    balance, _ = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == 100


def test_fetched_images_over_the_task_pixel_budget_fail_the_task_before_decoding(
    server_factory: Any, image_host: str
) -> None:
    server: RunningServer = server_factory(task_max_pixels=64 * 48 * 2 - 1)  # FILES are 64x48
    issued = server.new_key(credits=100)
    urls = [f"{image_host}/photo.webp", f"{image_host}/photo.gif"]
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "too many pixels", "images": urls})
        assert answer.status_code == 200  # URLs are fetched by the worker, not at submit
        data = wait_for_task(client, answer.json()["data"]["task_id"])
    assert (data["status"], data["error_message"]) == ("failed", "File type not supported")
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100
