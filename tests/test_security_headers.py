"""`X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer` on every
JSON answer (fast paths, routes, errors, health) and every file answer."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from conftest import RunningServer
from helpers import wait_for_task


def assert_secured(answer: httpx.Response) -> None:
    assert answer.headers.get_list("x-content-type-options") == ["nosniff"], answer.headers
    assert answer.headers.get_list("referrer-policy") == ["no-referrer"], answer.headers


def test_every_json_answer_carries_the_security_headers(
    sqlite_server: Callable[..., RunningServer],
) -> None:
    server = sqlite_server(workers=0)
    key = server.new_key().key
    with server.client(key) as client, server.client() as anonymous:
        submitted = client.post("/v1/generate", json={"prompt": "a lake", "duration": 1})
        assert submitted.status_code == 200  # the fast path
        task_id = submitted.json()["data"]["task_id"]
        answers = [
            submitted,
            client.get("/v1/status", params={"task_id": task_id}),  # fast path
            client.get("/v1/status", params=[("task_id", task_id), ("x", "1")]),  # route
            client.get("/v1/tasks"),
            client.get("/v1/account"),
            client.get("/v1/status", params={"task_id": "missing"}),  # 404
            client.post("/v1/generate", json={"prompt": 5}),  # 400 from the route
            client.get("/v1/nowhere"),  # 404 from the router
            client.delete("/v1/status"),  # 405
            anonymous.get("/v1/status", params={"task_id": task_id}),  # 401 from the gate
            anonymous.get("/healthz"),
            anonymous.get("/nowhere"),
        ]
    for answer in answers:
        assert answer.headers["content-type"].startswith("application/json"), answer.url
        assert_secured(answer)


def test_every_file_answer_carries_the_security_headers(
    sqlite_server: Callable[..., RunningServer],
) -> None:
    server = sqlite_server()
    with server.client(server.new_key().key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "a lake", "duration": 1}).json()[
            "data"
        ]["task_id"]
        url = wait_for_task(client, task_id)["response"][0]
    path = urlsplit(url)
    signed = f"{path.path}?{path.query}"
    with server.client() as anonymous:
        whole = anonymous.get(signed)
        part = anonymous.get(signed, headers={"Range": "bytes=0-99"})
        head = anonymous.head(signed)
        beyond = anonymous.get(signed, headers={"Range": "bytes=999999999-"})
        forged = anonymous.get(signed.replace("signature=", "signature=0"))
    assert (whole.status_code, part.status_code, head.status_code) == (200, 206, 200)
    assert (beyond.status_code, forged.status_code) == (416, 404)
    for answer in (whole, part, head, beyond, forged):
        assert_secured(answer)
