"""Storage that fails: S3 answering 5xx or hanging, and a full local disk.

S3 is the moto server behind `FaultProxy`, which answers uploads (PUTs) as
each scenario plans: a few 5xx are absorbed by the retries inside the
attempt; more fail the attempt and the queue retries the task; always
failing ends the task `failed` and refunded. A completed task always has its
file, and no object is left behind by a failed upload.

The full disk is a small tmpfs mounted as the data dir (the database is
PostgreSQL, as in the scaled-out mode). Where mounting is not allowed (not
root), the storage's writes are made to fail with ENOSPC instead: the same
path through the worker, without the engine's scratch files being hit.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from sqlalchemy import select

from imagine.db.database import Database
from imagine.db.models import Task
from imagine.storage.local import LocalStorage

from conftest import RunningServer, make_settings, start_server
from databases import PostgresDatabases
from helpers import balance_and_ledger, run_db, wait_for_task
from loopback_doubles import FaultProxy, Reply, Seen
from objectstore import S3Server

COST = 40
BODY = {"prompt": "storage", "duration": 1}


@pytest.fixture
def database(postgres: PostgresDatabases) -> Iterator[str]:
    url = postgres.create()
    yield url
    postgres.drop(url)


class UploadFaults:
    """What the proxy does to the next uploads: a planned answer each, then
    `otherwise` (None: forwarded)."""

    def __init__(self) -> None:
        self.planned: list[Reply] = []
        self.otherwise: Reply | None = None
        self.uploads = 0
        self._lock = threading.Lock()

    def rule(self, seen: Seen, _number: int) -> Reply | None:
        if seen.method != "PUT":
            return None
        with self._lock:
            self.uploads += 1
            return self.planned.pop(0) if self.planned else self.otherwise


async def _attempts(db: Database, task_id: str) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(Task.attempts).where(Task.id == task_id)) or 0)


def _run(client: httpx.Client, server: RunningServer) -> tuple[dict[str, Any], int]:
    task_id = client.post("/v1/generate", json=BODY).json()["data"]["task_id"]
    data = wait_for_task(client, task_id, timeout=90)
    return data, run_db(server.settings, lambda db: _attempts(db, task_id))


def test_s3_5xx_and_timeouts_are_retried_and_never_complete_a_task_without_its_file(
    database: str,
    s3_env: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = s3_env.new_bucket()
    faults = UploadFaults()
    with FaultProxy(s3_env.endpoint, faults.rule).running() as proxy_url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy_url)
        server = start_server(
            make_settings(
                tmp_path / "data",
                database_url=database,
                storage_url=f"s3://{bucket}",
                storage_timeout_seconds=1.0,
                max_attempts=2,
                rate_limit_free=100_000,
            )
        )
        try:
            issued = server.new_key(credits=COST * 10)
            with server.client(issued.key) as client:
                # Two 5xx: absorbed by the retries inside the attempt.
                faults.planned = [Reply(503), Reply(500)]
                data, attempts = _run(client, server)
                assert (data["status"], attempts, faults.uploads) == ("completed", 1, 3)
                completed = [data]

                # An upload that hangs past the timeout is retried the same way.
                faults.uploads, faults.planned = 0, [Reply(503, delay=3.0)]
                data, attempts = _run(client, server)
                assert (data["status"], attempts, faults.uploads) == ("completed", 1, 2)
                completed.append(data)

                # Every try of the attempt fails: the queue retries the task.
                faults.uploads, faults.planned = 0, [Reply(500)] * 3
                data, attempts = _run(client, server)
                assert (data["status"], attempts, faults.uploads) == ("completed", 2, 4)
                completed.append(data)

                # Never stored: failed for good, refunded, nothing completed.
                faults.uploads, faults.otherwise = 0, Reply(503)
                failed, attempts = _run(client, server)
                assert (failed["status"], attempts, faults.uploads) == ("failed", 2, 6)
                assert failed["consumed_credits"] == 0 and not failed.get("response")
                faults.otherwise = None

                for done in completed:  # each completed task's file is there, whole
                    (url,) = done["response"]
                    answer = httpx.get(url)
                    assert answer.status_code == 200 and answer.content[4:8] == b"ftyp"
            stored = s3_env.keys(bucket)
            assert sorted(k.split("/")[0] for k in stored) == sorted(
                d["task_id"] for d in completed
            )
            balance, total = run_db(
                server.settings, lambda db: balance_and_ledger(db, issued.account_id)
            )
            assert balance == total == COST * (10 - len(completed))
        finally:
            server.stop()


@pytest.fixture(params=["tmpfs", "simulated"])
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], None]]:
    """A data dir that can fill up. Yields `fill()`; the test frees the space by
    deleting `<data dir>/filler`. A real tmpfs (the engine's scratch file is
    what fails first there), or the storage's writes failing with ENOSPC
    (the path that must leave no partial file)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = (
        request.param == "tmpfs"
        and os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)],
            capture_output=True,
        ).returncode
        == 0
    )
    if request.param == "tmpfs" and not mounted:
        pytest.skip("mounting a tmpfs needs root; the simulated full disk still runs")
    if mounted:

        def fill() -> None:
            descriptor = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(descriptor, b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(descriptor)

    else:  # simulated: storage writes fail with ENOSPC while the filler exists
        original = LocalStorage._write

        def write(target: Path, fill_file: Callable[[BinaryIO], object]) -> None:
            def failing(writer: BinaryIO) -> object:
                if (mount / "filler").exists():
                    raise OSError(errno.ENOSPC, "No space left on device")
                return fill_file(writer)

            original(target, failing)

        monkeypatch.setattr(LocalStorage, "_write", staticmethod(write))

        def fill() -> None:
            (mount / "filler").touch()

    try:
        yield fill
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_task_with_a_refund_and_recovers_when_space_is_freed(
    database: str, tmp_path: Path, small_disk: Callable[[], None]
) -> None:
    data_dir = tmp_path / "disk"
    server = start_server(
        make_settings(data_dir, database_url=database, max_attempts=2, rate_limit_free=100_000)
    )
    try:
        issued = server.new_key(credits=COST * 10)
        with server.client(issued.key) as client:
            small_disk()
            failed, _ = _run(client, server)  # the engine's scratch file or the store fails
            assert (failed["status"], failed["consumed_credits"]) == ("failed", 0)
            assert client.get("/v1/account").status_code == 200  # still answering
            files = server.settings.files_dir
            assert not [p for p in files.rglob("*") if p.is_file()]  # no half-written file

            (data_dir / "filler").unlink()
            done, _ = _run(client, server)
            assert done["status"] == "completed"
            answer = client.get(done["response"][0])
            assert answer.status_code == 200 and answer.content[4:8] == b"ftyp"
        balance, total = run_db(
            server.settings, lambda db: balance_and_ledger(db, issued.account_id)
        )
        assert balance == total == COST * 9
    finally:
        server.stop()
