"""Shared fixtures: a real Imagine server on loopback, keys, and a media helper."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from imagine.accounts import service as accounts
from imagine.app import create_app
from imagine.db.database import Database
from imagine.server import uvicorn_config
from imagine.settings import Settings, load_settings

from databases import PostgresDatabases
from helpers import run_db
from objectstore import S3Server, run_s3_server
from processes import ImagineProcess


@dataclass
class RunningServer:
    """An app served by uvicorn in a background thread, on a real loopback socket."""

    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def new_key(self, plan: str = "free", credits: int = 1000) -> accounts.IssuedKey:
        async def create(db: Database) -> accounts.IssuedKey:
            async with db.write() as session:
                return await accounts.create_account(session, plan=plan, credits=credits)

        return run_db(self.settings, create)

    def new_admin_key(self) -> accounts.IssuedKey:
        """An admin key as `imagine keys create --admin` makes one."""

        async def create(db: Database) -> accounts.IssuedKey:
            async with db.write() as session:
                return await accounts.create_account(
                    session, plan="enterprise", credits=0, name="operator", is_admin=True
                )

        return run_db(self.settings, create)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(
    settings: Settings, configure_app: Callable[[FastAPI], Any] | None = None
) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A port the test chose (to know its URL before the app is built), else any.
    sock.bind(("127.0.0.1", settings.port if "port" in settings.model_fields_set else 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    if configure_app is not None:
        configure_app(app)
    server = uvicorn.Server(uvicorn_config(app, settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", settings, server, thread)


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "data_dir": data_dir,
        "workers": 1,
        "poll_interval": 0.05,
        "lease_seconds": 5.0,
        "allow_private_urls": True,
        "log_level": "warning",
        "grpc_port": 0,  # tests that speak gRPC choose a free port
    }
    defaults.update(overrides)
    return load_settings(**defaults)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.close()


@pytest.fixture
def processes() -> Iterator[list[ImagineProcess]]:
    """Every `imagine` process a test appends here is stopped when the test ends."""
    started: list[ImagineProcess] = []
    yield started
    for proc in started:
        proc.terminate()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    yield from run_s3_server()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point this process's AWS settings at the loopback S3 server."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses a server runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield ""  # each server's own SQLite file in its data dir
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def server_factory(tmp_path: Path, database_url: str) -> Iterator[Any]:
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        overrides.setdefault("database_url", database_url or None)
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        configure_app = overrides.pop("configure_app", None)
        running = start_server(make_settings(data_dir, **overrides), configure_app)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Servers with their own settings on SQLite only, e.g. `sqlite_server(workers=0)`,
    for what does not depend on the database."""
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        running = start_server(make_settings(tmp_path / f"server{len(started)}", **overrides))
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def server(server_factory: Any) -> RunningServer:
    return server_factory()  # type: ignore[no-any-return]
