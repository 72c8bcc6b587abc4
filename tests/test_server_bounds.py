"""What one request may take from the server: header size and count, header and
body time, connections, keep-alive; and keys, file signatures and task ids
refused on their shape, never with a 500. Raw sockets on loopback, since well-behaved
clients cannot send what these refuse."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from imagine.accounts import keys
from imagine.accounts.service import KeyCache, authenticate
from imagine.db.database import Database
from imagine.db.models import Task

from conftest import RunningServer, make_settings
from helpers import balance_and_ledger, count_rows, run_db
from processes import ImagineProcess, ServeProcess

Factory = Callable[..., RunningServer]
MB = 1024 * 1024


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, limit: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


# -- header size and count ---------------------------------------------------


def test_oversized_header_block_is_refused_without_memory_growth(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    """Four connections each start a 48 MB header: each is refused (431, or reset
    while still sending) and the `imagine serve` process's peak RSS barely moves."""
    serve = ServeProcess(tmp_path / "data")
    processes.append(serve)
    (Path(f"/proc/{serve.pid}/clear_refs")).write_text("5")  # peak RSS := current RSS
    before = vm_kib(serve.pid, "VmRSS")

    sockets = [connect(serve.url) for _ in range(4)]
    sent = [0] * len(sockets)
    refused = [False] * len(sockets)
    for sock in sockets:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * 65536
    for _ in range(48 * MB // len(chunk)):
        for number, sock in enumerate(sockets):
            if refused[number]:
                continue
            try:
                sock.sendall(chunk)
                sent[number] += len(chunk)
            except OSError:
                refused[number] = True
        if all(refused):
            break
    for number, sock in enumerate(sockets):
        with closing(sock):
            answer = read_until_closed(sock)
            if answer:
                assert status_of(answer) == 431, answer[:200]
                assert b'"error":"HEADERS_TOO_LARGE"' in answer
            assert refused[number] or answer, f"connection {number} took {sent[number]} bytes"
    assert min(sent) < 16 * MB

    growth_kib = vm_kib(serve.pid, "VmHWM") - before
    assert growth_kib < 20 * 1024, f"server peak RSS grew by {growth_kib} KiB"
    assert httpx.get(f"{serve.url}/healthz").status_code == 200


def test_a_header_block_over_the_limit_is_431_and_closed(sqlite_server: Factory) -> None:
    server = sqlite_server(max_header_bytes=4096)
    with closing(connect(server.url)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(20):
                sock.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
                time.sleep(0.05)  # separate reads, as a slow client's would be
        except OSError:
            pass  # refused meanwhile
        answer = read_until_closed(sock)
    assert status_of(answer) == 431
    assert b"larger than 4096 bytes" in answer


def test_too_many_headers_are_refused_with_431(sqlite_server: Factory) -> None:
    server = sqlite_server(max_headers=20)
    with httpx.Client(base_url=server.url) as client:
        fine = client.get("/healthz", headers={f"x-h{n}": "v" for n in range(14)})
        assert fine.status_code == 200
        refused = client.get("/healthz", headers={f"x-h{n}": "v" for n in range(40)})
    assert refused.status_code == 431
    assert refused.json()["error"] == "HEADERS_TOO_LARGE"
    assert refused.headers["connection"] == "close"
    assert refused.headers["x-content-type-options"] == "nosniff"


# -- time to send headers and body ---------------------------------------------


@pytest.mark.alone
def test_slow_headers_are_cut_off_within_the_header_timeout(sqlite_server: Factory) -> None:
    server = sqlite_server(header_timeout_seconds=1)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    with closing(connect(server.url)) as sock:
        started = time.monotonic()
        try:
            for byte in request:  # a byte every 0.2 s: never a pause, never done
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert b'"error":"REQUEST_TIMEOUT"' in answer
    assert elapsed < 1 + 2, elapsed


@pytest.mark.alone
def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout(
    sqlite_server: Factory,
) -> None:
    server = sqlite_server(header_timeout_seconds=1)
    with closing(connect(server.url)) as sock:
        started = time.monotonic()
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert elapsed < 1 + 2, elapsed


@pytest.mark.alone
def test_stalled_body_is_answered_408_and_closed_without_effect(
    sqlite_server: Factory,
) -> None:
    server = sqlite_server(body_timeout_seconds=1)
    issued = server.new_key()
    with closing(connect(server.url)) as sock:
        sock.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + issued.key.encode() + b"\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"prompt":'
        )
        started = time.monotonic()
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer[:300]
    assert b"Request body stalled" in answer
    assert elapsed < 1 + 2, elapsed
    assert count_rows(server.settings, Task) == 0
    balance, ledger_sum = run_db(
        server.settings, lambda db: balance_and_ledger(db, issued.account_id)
    )
    assert balance == ledger_sum == issued.credits


def test_a_body_that_keeps_arriving_is_not_cut_off(sqlite_server: Factory) -> None:
    """The body timeout bounds pauses, not the whole upload."""
    server = sqlite_server(body_timeout_seconds=1)
    issued = server.new_key()
    body = b'{"prompt": "' + b"p" * 30 + b'", "duration": 1}'
    with closing(connect(server.url)) as sock:
        sock.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + issued.key.encode() + b"\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        for start in range(0, len(body), 8):  # about 2.5 s in all, never 1 s idle
            sock.sendall(body[start : start + 8])
            time.sleep(0.4)
        answer = read_until_closed(sock)
    assert status_of(answer) == 200, answer[:300]
    assert count_rows(server.settings, Task) == 1


# -- connections ---------------------------------------------------------------


def test_requests_past_max_connections_get_503(sqlite_server: Factory) -> None:
    server = sqlite_server(max_connections=3)
    held = [connect(server.url) for _ in range(3)]
    try:
        time.sleep(0.2)  # accepted by the server
        assert httpx.get(f"{server.url}/healthz").status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while httpx.get(f"{server.url}/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_an_idle_connection_is_closed_after_the_keep_alive_time(sqlite_server: Factory) -> None:
    server = sqlite_server(keep_alive_seconds=1)
    with closing(connect(server.url)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = read_until_closed(sock)  # the answer, then the close
        elapsed = time.monotonic() - started
    assert status_of(answer) == 200
    assert 0.5 < elapsed < 1 + 2, elapsed


# -- keys: shape before hash -------------------------------------------------------


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The length of every key `keys.hash_key` is asked to hash."""
    lengths: list[int] = []
    real = keys.hash_key

    def recording(key: str) -> str:
        lengths.append(len(key))
        return real(key)

    monkeypatch.setattr(keys, "hash_key", recording)
    yield lengths


def test_over_long_and_non_ascii_keys_are_refused_before_hashing(
    tmp_path: Path, hashed: list[int]
) -> None:
    """Neither the cache nor the lookup hashes (or queries) what cannot be a key."""
    valid = keys.generate_key()
    not_keys = [
        "imk_" + "a" * (40 * MB),
        valid + "a",
        valid[:-3] + "\u00e9\u00e9\u00e9",  # right length, non-ASCII checksum
        "imk_" + "\u00e9" * 38,
    ]

    async def scenario(db: Database) -> list[object]:
        cache = KeyCache(db, ttl=5)
        seen: list[object] = []
        for key in not_keys:
            seen.append(await cache.authenticate(key))
            seen.append(await authenticate(db, key))
        return seen

    settings = make_settings(tmp_path)
    assert run_db(settings, scenario) == [None] * (2 * len(not_keys))
    assert hashed == []
    database = tmp_path / "imagine.db"  # created private and empty, never queried
    assert not database.exists() or database.stat().st_size == 0


def test_a_huge_bearer_token_is_401_without_hashing(
    sqlite_server: Factory, hashed: list[int]
) -> None:
    server = sqlite_server(max_header_bytes=1024 * 1024)
    token = "imk_" + "a" * 1_000_000
    with server.client(token) as client:
        answer = client.get("/v1/status", params={"task_id": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "UNAUTHORIZED"
    assert hashed == []


def test_non_ascii_bytes_in_a_bearer_token_are_401_not_500(sqlite_server: Factory) -> None:
    server = sqlite_server()
    valid = keys.generate_key().encode()
    for token in (valid[:-3] + "é".encode("latin-1") * 3, valid[:-4] + "é".encode() * 2):
        with httpx.Client(base_url=server.url) as client:
            answer = client.get(
                "/v1/status",
                params={"task_id": "x"},
                headers={b"Authorization": b"Bearer " + token},
            )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "UNAUTHORIZED"


# -- file signatures -------------------------------------------------------------


@pytest.mark.parametrize("signature", ["%C3%A9", "%FF", "%C3%A9" * 64, "%00"])
def test_non_ascii_file_signatures_are_404_not_500(sqlite_server: Factory, signature: str) -> None:
    server = sqlite_server()
    with closing(connect(server.url)) as sock:
        sock.sendall(
            f"GET /files/x/y.mp4?expires=9999999999&signature={signature} HTTP/1.1\r\n"
            "Host: x\r\nConnection: close\r\n\r\n".encode()
        )
        answer = read_until_closed(sock)
    assert status_of(answer) == 404, answer[:300]
    assert b'"error":"NOT_FOUND"' in answer


# -- task ids ----------------------------------------------------------------------


@pytest.mark.parametrize("task_id", ["task_\u00e9", "task_" + "g" * 24, "x" * 5000])
def test_task_ids_that_cannot_be_ids_are_404_without_a_query(
    server: RunningServer, task_id: str
) -> None:
    """Text that cannot be a task id is a miss without a query (text that is not
    text at all, such as NUL, is a 400: tests/test_request_text.py)."""
    with server.client(server.new_key().key) as client:
        answers = [
            client.get("/v1/status", params={"task_id": task_id}),
            client.post("/v1/cancel", json={"task_id": task_id}),
            client.get(f"/v1/tasks/{quote(task_id)}/deliveries"),
        ]
        listing = client.get("/v1/tasks", params={"after": task_id})
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == "NOT_FOUND"
    assert listing.status_code == 400, listing.text
