"""data: images kept out of the task row, and the bounds on what input images may cost:
checked at submit (type, size, pixel budget, the account's stored bytes, the
body cap), stored outside the database, deleted when the task ends, and decoded
one at a time within a memory bound."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import select, update

from imagine.db.database import Database
from imagine.db.models import Task
from imagine.ids import utcnow
from imagine.settings import Settings

from conftest import RunningServer
from helpers import (
    assert_error,
    balance_and_ledger,
    count_rows,
    data_url,
    image_bytes,
    noise_png,
    peak_memory_growth,
    run_db,
    wait_for_task,
)

MiB = 1024 * 1024


def stored_inputs(server: RunningServer) -> list[Path]:
    folder = server.settings.files_dir / "inputs"
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def task_request(server: RunningServer, task_id: str) -> dict[str, Any]:
    async def read(db: Database) -> dict[str, Any]:
        async with db.read() as session:
            request = await session.scalar(select(Task.request).where(Task.id == task_id))
        assert isinstance(request, dict)
        return request

    return run_db(server.settings, read)


def sqlite_bytes(settings: Settings) -> int:
    """The database file and its write-ahead log together."""
    base = settings.data_dir / "imagine.db"
    return sum(path.stat().st_size for path in (base, Path(f"{base}-wal")) if path.exists())


def uses_sqlite(server: RunningServer) -> bool:
    return server.settings.database_url is None


def summary(url: str) -> str:
    return f"data:image/png;base64,…({len(url)} characters)"


def assert_nothing_changed(server: RunningServer, account_id: str, credits: int) -> None:
    assert count_rows(server.settings, Task) == 0
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, account_id))
    assert balance == total == credits
    assert stored_inputs(server) == []


# -- checked at submit ----------------------------------------------------------

TRUNCATED_PNG = noise_png((100, 100))[:2000]  # the header intact, the pixels cut short


def image_url() -> str:
    return data_url(image_bytes((20, 160, 40)))


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (data_url(b"just some text, not an image at all"), "File type not supported"),
        (data_url(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF"), "not a PNG"),
        (data_url(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "not a readable PNG"),
        ("data:image/png;" + "x" * 300 + ";base64,iVBORw0KGgo=", "header longer than"),
    ],
    ids=["text", "pdf", "bad-png-header", "long-header"],
)
def test_data_image_that_is_not_an_image_is_refused_at_submit_and_changes_nothing(
    server: RunningServer, url: str, fragment: str
) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "x", "images": [image_url(), url]})
    body = assert_error(answer, 400, "INVALID_REQUEST")
    assert body["message"].startswith("Invalid request: images[1] ")
    assert fragment in body["message"]
    assert_nothing_changed(server, issued.account_id, 100)


def test_oversized_images_by_pixels_are_refused_at_submit(server_factory: Any) -> None:
    server: RunningServer = server_factory(image_max_pixels=300 * 300, task_max_pixels=500 * 500)
    issued = server.new_key(credits=100)
    one_too_big = data_url(image_bytes((1, 2, 3), size=(301, 300)))
    three = [data_url(image_bytes((1, 2, 3), size=(300, 300)))] * 3  # 270,000 pixels
    with server.client(issued.key) as client:
        too_big = client.post("/v1/generate", json={"prompt": "x", "images": [one_too_big]})
        too_many = client.post("/v1/generate", json={"prompt": "x", "images": three})
    assert "images[0] is 301x300 pixels" in assert_error(too_big, 400, "INVALID_REQUEST")["message"]
    message = assert_error(too_many, 400, "INVALID_REQUEST")["message"]
    assert "270000 pixels together, more than the 250000 allowed per task" in message
    assert_nothing_changed(server, issued.account_id, 100)


# -- kept in storage, not in the row -------------------------------------------


def test_large_data_image_lives_in_storage_not_in_the_task_row(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    issued = server.new_key(credits=100)
    image = noise_png((1200, 1000))
    assert len(image) > 3 * MiB
    url = data_url(image)
    before = sqlite_bytes(server.settings) if uses_sqlite(server) else 0
    with server.client(issued.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "big", "images": [url]})
        assert answer.status_code == 200, answer.text
        task_id = answer.json()["data"]["task_id"]

        files = stored_inputs(server)
        assert len(files) == 1 and files[0].read_bytes() == image
        assert files[0].relative_to(server.settings.files_dir).parts[:2] == ("inputs", task_id)
        if uses_sqlite(server):
            assert sqlite_bytes(server.settings) - before < len(image) / 10
        row = task_request(server, task_id)
        assert len(json.dumps(row)) < 1000  # a reference, not the image
        assert row["images"][0]["shown"] == summary(url)

        status = client.get("/v1/status", params={"task_id": task_id}).json()["data"]
        assert status["request"]["images"] == [summary(url)]
        listed = client.get("/v1/tasks").json()["data"]["tasks"]
        assert [task["request"]["images"] for task in listed] == [[summary(url)]]

        cancelled = client.post("/v1/cancel", json={"task_id": task_id}).json()["data"]
    assert cancelled["status"] == "cancelled"
    assert stored_inputs(server) == []
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 100


@pytest.mark.parametrize(
    ("image", "status"),
    [(image_bytes((0, 90, 200), size=(400, 300)), "completed"), (TRUNCATED_PNG, "failed")],
    ids=["completed", "failed"],
)
def test_input_images_are_deleted_when_the_task_ends(
    server: RunningServer, image: bytes, status: str
) -> None:
    issued = server.new_key(credits=100)
    with server.client(issued.key) as client:
        answer = client.post(
            "/v1/generate", json={"prompt": "x", "images": [data_url(image)], "duration": 1}
        )
        assert answer.status_code == 200, answer.text
        data = wait_for_task(client, answer.json()["data"]["task_id"])
    assert data["status"] == status
    if status == "failed":
        assert data["error_message"] == "File type not supported"
    deadline = time.monotonic() + 5  # deleted just after the ending commits
    while stored_inputs(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_inputs(server) == []
    assert server.settings.files_dir.joinpath("inputs").exists()  # they were stored there


def test_refused_and_replayed_submits_leave_no_input_images(server_factory: Any) -> None:
    server: RunningServer = server_factory(workers=0)
    poor = server.new_key(credits=39)
    with server.client(poor.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "x", "images": [image_url()]})
    assert_error(answer, 402, "INSUFFICIENT_CREDITS")
    assert stored_inputs(server) == []

    issued = server.new_key(credits=100)
    body = {"prompt": "same", "images": [image_url()]}
    once = {"Idempotency-Key": "once"}
    with server.client(issued.key) as client:
        first = client.post("/v1/generate", json=body, headers=once).json()["data"]["task_id"]
        again = client.post("/v1/generate", json=body, headers=once).json()["data"]["task_id"]
        other = client.post("/v1/generate", json={**body, "prompt": "other"}, headers=once)
    assert again == first
    assert_error(other, 409, "IDEMPOTENCY_CONFLICT")
    assert [path.parent.name for path in stored_inputs(server)] == [first]


def test_stored_inputs_over_the_account_limit_are_refused_until_tasks_end(
    server_factory: Any,
) -> None:
    image = noise_png((100, 100))  # about 30 KB
    server: RunningServer = server_factory(workers=0, account_input_bytes=2 * len(image) + 100)
    issued = server.new_key(credits=1000)
    body = {"prompt": "x", "images": [data_url(image)]}
    with server.client(issued.key) as client:
        first = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        client.post("/v1/generate", json=body).raise_for_status()
        refused = client.post("/v1/generate", json=body)
        error = assert_error(refused, 429, "RATE_LIMITED")
        assert "hold" in error["message"] and "input images" in error["message"]
        assert int(refused.headers["retry-after"]) > 0
        alone = client.post("/v1/generate", json={**body, "images": [data_url(image)] * 3})
        assert "more than the" in assert_error(alone, 400, "INVALID_REQUEST")["message"]
        assert len(stored_inputs(server)) == 2
        balance, _ = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
        assert balance == 1000 - 2 * 40  # the refusals charged nothing

        client.post("/v1/cancel", json={"task_id": first}).raise_for_status()
        assert client.post("/v1/generate", json=body).status_code == 200
    assert count_rows(server.settings, Task) == 3
    assert len(stored_inputs(server)) == 2


def test_body_cap_fits_the_image_limits_and_larger_bodies_are_413(server_factory: Any) -> None:
    settings = {"image_max_bytes": 30_000, "max_images": 2, "max_prompt_chars": 100}
    server: RunningServer = server_factory(workers=0, **settings)
    limit = server.settings.body_limit
    full = noise_png((99, 99))  # just under 30,000 bytes
    assert 29_000 < len(full) <= 30_000
    issued = server.new_key(credits=1000)
    largest = {"prompt": "p" * 100, "images": [data_url(full)] * 2}
    with server.client(issued.key) as client:
        assert client.post("/v1/generate", json=largest).status_code == 200
        padded = json.dumps({**largest, "prompt": "p" * (limit + 1)}).encode()
        answer = client.post(
            "/v1/generate", content=padded, headers={"Content-Type": "application/json"}
        )
    assert_error(answer, 413, "PAYLOAD_TOO_LARGE")
    assert count_rows(server.settings, Task) == 1
    default = Settings()
    assert default.body_limit >= 7 * (4 * default.image_max_bytes // 3) + 5000


# -- what a crash leaves behind -------------------------------------------------


def test_sweep_deletes_left_over_inputs_of_ended_or_missing_tasks_only(
    server_factory: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    first: RunningServer = server_factory(workers=0, data_dir=data_dir)
    issued = first.new_key(credits=1000)
    with first.client(issued.key) as client:
        body = {"prompt": "x", "images": [image_url()]}
        waiting = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        ended = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        client.post("/v1/cancel", json={"task_id": ended}).raise_for_status()
    first.stop()

    async def hold_back(db: Database) -> None:  # not claimed by the next server's worker
        async with db.write() as session:
            await session.execute(
                update(Task)
                .where(Task.id == waiting)
                .values(available_at=utcnow().replace(year=2099))
            )

    run_db(first.settings, hold_back)
    inputs = first.settings.files_dir / "inputs"
    left_over = [inputs / ended / "0-crash", inputs / "task_nevercommitted" / "0-crash"]
    recent = inputs / "task_stillsubmitting" / "0-now"
    for path in [*left_over, recent]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left behind")
    hour_ago = time.time() - 3600
    for path in [*left_over, *inputs.joinpath(waiting).iterdir()]:
        os.utime(path, (hour_ago, hour_ago))

    second: RunningServer = server_factory(data_dir=data_dir, input_retention_seconds=600)
    deadline = time.monotonic() + 10
    while any(path.exists() for path in left_over) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(path.exists() for path in left_over)
    assert recent.exists()  # younger than the retention: its submit may still commit
    assert [path.parent.name for path in stored_inputs(second)] == [waiting, "task_stillsubmitting"]


def test_rows_with_inline_data_images_from_before_storage_still_run(
    server_factory: Any, tmp_path: Path
) -> None:
    """Tasks written before images went to storage keep the data: URL in the row."""
    data_dir = tmp_path / "upgraded"
    first: RunningServer = server_factory(workers=0, data_dir=data_dir)
    issued = first.new_key(credits=100)
    with first.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "old", "duration": 1}).json()["data"][
            "task_id"
        ]
    first.stop()
    inline = image_url()

    async def as_before(db: Database) -> None:
        async with db.write() as session:
            task = await session.get(Task, task_id)
            assert task is not None
            task.request = {**task.request, "images": [inline]}

    run_db(first.settings, as_before)
    second: RunningServer = server_factory(data_dir=data_dir)
    with second.client(issued.key) as client:
        data = wait_for_task(client, task_id)
    assert data["status"] == "completed", data
    assert data["request"]["images"] == [summary(inline)]


def test_stored_inputs_are_never_served_as_files(server_factory: Any) -> None:
    apps: list[FastAPI] = []
    server: RunningServer = server_factory(workers=0, configure_app=apps.append)
    issued = server.new_key()
    with server.client(issued.key) as client:
        client.post("/v1/generate", json={"prompt": "x", "images": [image_url()]})
    (path,) = stored_inputs(server)
    key = path.relative_to(server.settings.files_dir).as_posix()
    signed = apps[0].state.services.storage.url(key, server.url)  # even signed by the server
    with server.client() as anonymous:
        assert_error(anonymous.get(signed), 404, "NOT_FOUND")


# -- decoding within bounds ----------------------------------------------------


@pytest.fixture(scope="module")
def huge_flat_png() -> bytes:
    """7000 x 7000 pixels of one colour: about 150 MB decoded, a few hundred KB as PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_seven_huge_images_over_the_pixel_budget_are_refused_at_submit_cheaply(
    server: RunningServer, huge_flat_png: bytes
) -> None:
    issued = server.new_key(credits=100)
    body = {"prompt": "bomb", "images": [data_url(huge_flat_png)] * 7}
    with server.client(issued.key) as client, peak_memory_growth() as growth:
        answer = client.post("/v1/generate", json=body)
    message = assert_error(answer, 400, "INVALID_REQUEST")["message"]
    assert "343000000 pixels together, more than the 100000000 allowed per task" in message
    assert growth[0] < 64 * MiB  # headers were read; nothing was decoded
    assert_nothing_changed(server, issued.account_id, 100)


def test_seven_huge_images_within_the_budget_decode_one_at_a_time_and_reduced(
    server_factory: Any, huge_flat_png: bytes, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(task_max_pixels=7 * 7000 * 7000)
    issued = server.new_key(plan="enterprise", credits=100)  # polled for a while
    body = {"prompt": "big", "images": [data_url(huge_flat_png)] * 7, "duration": 1}
    with server.client(issued.key) as client, peak_memory_growth() as growth:
        answer = client.post("/v1/generate", json=body)
        assert answer.status_code == 200, answer.text
        data = wait_for_task(client, answer.json()["data"]["task_id"], timeout=120)
    assert data["status"] == "completed", data
    # Seven full decodes at once took over 1 GB; one at a time is one image (147 MB).
    print(f"peak grew by {growth[0] // MiB} MiB")
    assert growth[0] < 300 * MiB, f"peak grew by {growth[0] // MiB} MiB"
