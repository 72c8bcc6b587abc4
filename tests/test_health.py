"""`/livez` and `/readyz` against real outages: a PostgreSQL and a Redis of the
test's own, stopped and started again, and a real server process told to stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer
from processes import ImagineProcess, ServeProcess, free_port

pytestmark = pytest.mark.alone  # readiness is held to seconds

OUTAGE_NOTICED_WITHIN = 2.0


def poll_until(client: httpx.Client, status: int, timeout: float) -> tuple[float, httpx.Response]:
    """Poll `/readyz` until it answers `status`; how long it took, and the answer.
    `/livez` must answer 200 on every round meanwhile."""
    started = time.monotonic()
    while True:
        answer = client.get("/readyz")
        assert client.get("/livez").status_code == 200
        if answer.status_code == status:
            return time.monotonic() - started, answer
        assert time.monotonic() - started < timeout, (answer.status_code, answer.text)
        time.sleep(0.05)


class Redis:
    """A redis-server of this test's own on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis()
    server.start()
    yield server
    server.stop()


class Postgres:
    """A PostgreSQL cluster of this test's own (initdb in a temporary directory),
    so stopping it disturbs nothing else. As root, it runs as `postgres`."""

    def __init__(self) -> None:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not versions:
            pytest.fail(
                "PostgreSQL's server binaries are not installed (scripts/test installs them)"
            )
        self.bin = versions[-1]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="imagine-pg-"))
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "imagine")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/imagine"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_owner, str(self.bin / tool), *args], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run(
            [
                *self.as_owner,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    cluster = Postgres()
    yield cluster
    cluster.close()


ServerFactory = Callable[..., RunningServer]


def test_readyz_names_its_checks_and_livez_checks_nothing(sqlite_server: ServerFactory) -> None:
    server = sqlite_server(workers=1)
    with server.client() as client:
        live = client.get("/livez")
        ready = client.get("/readyz")
    assert live.json() == {"code": 200, "message": "success", "data": {"status": "ok"}}
    data = ready.json()["data"]
    assert ready.status_code == 200 and data["status"] == "ready"
    assert set(data["checks"]) == {"database", "storage"}  # no Redis configured
    assert all(check["ok"] for check in data["checks"].values())
    assert data["workers_alive"] == {"preview": 1}


@pytest.mark.parametrize("store", ["database", "redis"])
def test_readyz_turns_503_within_2_s_of_an_outage_and_200_after_it(
    sqlite_server: ServerFactory, request: pytest.FixtureRequest, store: str
) -> None:
    """PostgreSQL (the database) or Redis (the rate-limit store) stops, then returns."""
    outage: Postgres | Redis
    if store == "database":
        outage = request.getfixturevalue("own_postgres")
        server = sqlite_server(workers=0, database_url=outage.url, auto_migrate=True)
    else:
        outage = request.getfixturevalue("redis")
        server = sqlite_server(workers=0, redis_url=outage.url)
    with server.client() as client:
        poll_until(client, 200, timeout=10)
        outage.stop()
        took, answer = poll_until(client, 503, timeout=10)
        assert took <= OUTAGE_NOTICED_WITHIN
        body = answer.json()
        assert body["error"] == "SERVICE_UNAVAILABLE" and body["message"] == f"Not ready: {store}"
        assert body["data"]["checks"][store]["ok"] is False
        outage.start()
        poll_until(client, 200, timeout=15)


def test_with_fail_open_a_redis_outage_is_degraded_not_unready(
    sqlite_server: ServerFactory, redis: Redis
) -> None:
    server = sqlite_server(workers=0, redis_url=redis.url, rate_limit_fail_open=True)
    with server.client() as client:
        poll_until(client, 200, timeout=10)
        redis.stop()
        deadline = time.monotonic() + 10
        while (data := client.get("/readyz").json()["data"])["status"] != "degraded":
            assert time.monotonic() < deadline, data
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        assert data["checks"]["redis"] == {
            **data["checks"]["redis"],
            "ok": False,
            "required": False,
        }


def test_sigterm_turns_readyz_503_before_the_server_stops_serving(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    serving = ServeProcess(
        tmp_path / "data", "--workers", "0", env={"IMAGINE_SHUTDOWN_DELAY_SECONDS": "3"}
    )
    processes.append(serving)
    with httpx.Client(base_url=serving.url, timeout=5) as client:
        assert client.get("/readyz").status_code == 200
        serving.process.send_signal(signal.SIGTERM)
        took, answer = poll_until(client, 503, timeout=2)
        assert answer.json()["data"]["status"] == "draining"
        assert took < 1
        # Still serving while load balancers move away.
        time.sleep(1)
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
    serving.process.wait(20)  # and then it stops
