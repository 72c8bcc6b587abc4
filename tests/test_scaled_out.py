"""Scaled-out building blocks: schema migrations, Redis rate limits, S3 storage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from imagine.db import schema
from imagine.db.database import Database
from imagine.db.models import Base, Task
from imagine.media.video import probe_mp4
from imagine.runtime import prepare_database
from imagine.settings import load_settings
from imagine.storage.s3 import S3Storage

from conftest import RunningServer
from helpers import balance_and_ledger, count_rows, data_url, image_bytes, run_db, wait_for_task
from objectstore import S3Server
from processes import ImagineProcess, ServeProcess, WorkerProcess, cli


def test_migrations_build_exactly_the_models_schema(database_url: str, tmp_path: Path) -> None:
    async def diff(db: Database) -> list[Any]:
        await schema.upgrade(db)
        async with db.migration_connection() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )

    settings = load_settings(database_url=database_url or None, data_dir=tmp_path)
    assert run_db(settings, diff) == []


def test_server_refuses_an_out_of_date_schema_unless_told_to_upgrade(
    postgres: Any, tmp_path: Path
) -> None:
    url = postgres.create()
    try:

        async def empty(db: Database) -> None:
            async with db.migration_connection() as conn:
                await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
                await conn.exec_driver_sql("CREATE SCHEMA public")

        settings = load_settings(database_url=url, data_dir=tmp_path)
        run_db(settings, empty)
        with pytest.raises(schema.SchemaOutOfDate, match="imagine db upgrade"):
            run_db(settings, lambda db: prepare_database(db, settings))
        run_db(settings, schema.upgrade)
        run_db(settings, lambda db: prepare_database(db, settings))
        assert run_db(settings, schema.current_revision) == schema.head_revision()
    finally:
        postgres.drop(url)


def test_embedded_sqlite_upgrades_itself(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.should_auto_migrate
    run_db(settings, lambda db: prepare_database(db, settings))
    assert run_db(settings, schema.current_revision) == schema.head_revision()


def test_redis_limit_holds_across_api_processes(server_factory: Any) -> None:
    """Two servers with separate memory, one Redis: a key gets exactly its limit in total."""
    first: RunningServer = server_factory(redis_url="redis://127.0.0.1:6379/0", rate_limit_free=10)
    second: RunningServer = server_factory(
        redis_url="redis://127.0.0.1:6379/0",
        rate_limit_free=10,
        database_url=first.settings.resolved_database_url,
    )
    issued = first.new_key()

    async def hammer() -> list[int]:
        headers = {"Authorization": f"Bearer {issued.key}"}
        async with (
            httpx.AsyncClient(base_url=first.url, headers=headers) as a,
            httpx.AsyncClient(base_url=second.url, headers=headers) as b,
        ):
            answers = await asyncio.gather(
                *((a if i % 2 else b).get("/v1/status", params={"task_id": "x"}) for i in range(30))
            )
        return [answer.status_code for answer in answers]

    codes = asyncio.run(hammer())
    assert codes.count(404) == 10
    assert codes.count(429) == 20


def test_unreachable_redis_is_503_or_fails_open_by_setting(server_factory: Any) -> None:
    closed = server_factory(redis_url="redis://127.0.0.1:1/0")
    issued = closed.new_key()
    with closed.client(issued.key) as client:
        answer = client.post("/v1/generate", json={"prompt": "x"})
    assert answer.status_code == 503
    assert answer.json() == {
        "code": 503,
        "message": answer.json()["message"],
        "error": "SERVICE_UNAVAILABLE",
    }

    open_ = server_factory(
        redis_url="redis://127.0.0.1:1/0",
        rate_limit_fail_open=True,
        database_url=closed.settings.resolved_database_url,
    )
    with open_.client(issued.key) as client:
        assert client.get("/v1/status", params={"task_id": "x"}).status_code == 404


@pytest.mark.parametrize("public", [False, True])
def test_s3_storage_serves_outputs_by_presigned_or_public_url(
    server_factory: Any, s3_env: S3Server, tmp_path: Path, public: bool
) -> None:
    bucket = s3_env.new_bucket()
    server: RunningServer = server_factory(
        storage_url=f"s3://{bucket}/videos",
        storage_public_url=f"{s3_env.endpoint}/{bucket}" if public else None,
    )
    issued = server.new_key()
    with server.client(issued.key) as client:
        task_id = client.post("/v1/generate", json={"prompt": "to s3", "duration": 1}).json()[
            "data"
        ]["task_id"]
        url = wait_for_task(client, task_id)["response"][0]
    assert url.startswith(s3_env.endpoint)
    assert ("X-Amz-Signature" in url) is not public
    keys = s3_env.keys(bucket)
    assert len(keys) == 1 and keys[0].startswith(f"videos/{task_id}/")

    if public:  # moto serves objects anonymously only with a policy; read through the API
        body = s3_env.client().get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    else:
        answer = httpx.get(url)
        assert answer.status_code == 200
        body = answer.content
    target = tmp_path / "out.mp4"
    target.write_bytes(body)
    assert probe_mp4(target).codec == "h264"


def test_s3_keeps_input_images_apart_from_outputs_and_deletes_them_when_tasks_end(
    server_factory: Any, s3_env: S3Server
) -> None:
    bucket = s3_env.new_bucket()
    image = image_bytes((250, 200, 0), size=(320, 240))
    body = {"prompt": "from s3", "images": [data_url(image)], "duration": 1}
    waiting: RunningServer = server_factory(workers=0, storage_url=f"s3://{bucket}/videos")
    issued = waiting.new_key()
    with waiting.client(issued.key) as client:
        task_id = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        (key,) = s3_env.keys(bucket)
        assert key.startswith(f"videos/inputs/{task_id}/")
        assert s3_env.client().get_object(Bucket=bucket, Key=key)["Body"].read() == image
        client.post("/v1/cancel", json={"task_id": task_id}).raise_for_status()
    assert s3_env.keys(bucket) == []

    running: RunningServer = server_factory(storage_url=f"s3://{bucket}/videos")
    with running.client(running.new_key().key) as client:
        task_id = client.post("/v1/generate", json=body).json()["data"]["task_id"]
        assert wait_for_task(client, task_id)["status"] == "completed"
    deadline = time.monotonic() + 5  # deleted just after the ending commits
    while len(s3_env.keys(bucket)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    (output,) = s3_env.keys(bucket)
    assert output.startswith(f"videos/{task_id}/") and output.endswith(".mp4")


def test_s3_storage_lists_what_the_input_sweep_looks_at(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket()
    storage = S3Storage(f"s3://{bucket}/pre", ttl_seconds=60, client=s3_env.client())
    stored = [storage.put(f"inputs/task_{n}/0-x", b"image") for n in range(3)]
    storage.put("elsewhere/file", b"other")
    entries = storage.entries("inputs/")
    assert (
        sorted(key for key, _ in entries)
        == stored
        == [f"pre/inputs/task_{n}/0-x" for n in range(3)]
    )
    assert all(abs(written - time.time()) < 300 for _, written in entries)
    assert storage.read(stored[0]) == b"image"
    storage.delete(stored[0])
    with pytest.raises(FileNotFoundError):
        storage.read(stored[0])


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_200_concurrent_submits_on_postgres_accept_exactly_what_credits_cover(
    server_factory: Any,
) -> None:
    server: RunningServer = server_factory(workers=0, rate_limit_free=1000)
    issued = server.new_key(credits=50 * 40)

    async def fire() -> list[int]:
        headers = {"Authorization": f"Bearer {issued.key}"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=60, limits=limits
        ) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/generate", json={"prompt": f"{i}"}) for i in range(200))
            )
        return [answer.status_code for answer in answers]

    codes = asyncio.run(fire())
    assert codes.count(200) == 50
    assert codes.count(402) == 150
    assert count_rows(server.settings, Task) == 50
    balance, total = run_db(server.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == 0


def test_worker_sigterm_finishes_or_releases_in_flight_tasks(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    data_dir = tmp_path / "data"
    api = ServeProcess(data_dir, "--no-workers")
    processes.append(api)
    created = json.loads(
        cli(
            "keys",
            "create",
            "--plan",
            "pro",
            "--credits",
            "400",
            "--json",
            "--data-dir",
            str(data_dir),
        ).stdout
    )
    headers = {"Authorization": f"Bearer {created['key']}"}
    with httpx.Client(base_url=api.url, headers=headers) as client:
        long_task = client.post(
            "/v1/generate", json={"prompt": "long", "duration": 15, "resolution": "720p"}
        ).json()["data"]["task_id"]
        short_task = client.post("/v1/generate", json={"prompt": "short", "duration": 1}).json()[
            "data"
        ]["task_id"]

        # A grace period shorter than the long task: it must be handed back, not lost.
        worker = WorkerProcess(data_dir, env={"IMAGINE_SHUTDOWN_GRACE_SECONDS": "0.5"})
        processes.append(worker)
        deadline = time.monotonic() + 30
        while (
            client.get("/v1/status", params={"task_id": long_task}).json()["data"]["status"]
            != "processing"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert worker.terminate() == 0
        assert "handed back to the queue" in worker.output()
        state = client.get("/v1/status", params={"task_id": long_task}).json()["data"]
        assert state["status"] == "pending"

        settings = load_settings(data_dir=data_dir)

        async def leases(db: Database) -> list[Any]:
            async with db.read() as session:
                return list(await session.scalars(select(Task.lease_owner)))

        assert run_db(settings, leases) == [None, None]

        # Another worker picks both up and finishes them; nothing was charged twice.
        processes.append(WorkerProcess(data_dir))
        for task_id in (long_task, short_task):
            assert wait_for_task(client, task_id, timeout=120)["status"] == "completed"
    balance, total = run_db(settings, lambda db: balance_and_ledger(db, created["account_id"]))
    assert balance == total == 320
