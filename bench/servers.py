"""Servers under test, each a separate process on a free loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from bench.pg import TemporaryDatabase

ROOT = Path(__file__).resolve().parent.parent
QUIET = {
    "IMAGINE_LOG_LEVEL": "warning",
    "IMAGINE_RATE_LIMIT_ENTERPRISE": "1000000000",
    "IMAGINE_GRPC_PORT": "0",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_env(postgres: bool) -> tuple[dict[str, str], TemporaryDatabase | None]:
    """The server's environment for a run: none for SQLite (the data dir's file),
    or a fresh PostgreSQL database the caller drops when done."""
    if not postgres:
        return {}, None
    from bench.pg import TemporaryDatabase

    database = TemporaryDatabase()
    return {"IMAGINE_DATABASE_URL": database.url, "IMAGINE_AUTO_MIGRATE": "true"}, database


@contextmanager
def running(args: list[str], env: dict[str, str], health: str) -> Iterator[str]:
    with running_process(args, env, health) as (url, _pid):
        yield url


@contextmanager
def running_process(
    args: list[str], env: dict[str, str], health: str, log: Path | None = None
) -> Iterator[tuple[str, int]]:
    """`running`, with the process id too (for what the process itself spends);
    its output to `log` (appended), or discarded."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [arg.replace("{port}", str(port)) for arg in args]
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **QUIET, **env},
        stdout=output,
        stderr=output,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + health, timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not start") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(30)
        if log is not None:
            output.close()  # type: ignore[union-attr]


def baseline() -> AbstractContextManager[str]:
    return running(_BASELINE, {}, "/v1/status")


def baseline_process() -> AbstractContextManager[tuple[str, int]]:
    return running_process(_BASELINE, {}, "/v1/status")


_BASELINE = [
    sys.executable,
    "-m",
    "uvicorn",
    "bench.baseline_app:app",
    "--port",
    "{port}",
    "--log-level",
    "warning",
    "--no-access-log",
]


def imagine(data_dir: Path, env: dict[str, str], workers: int) -> AbstractContextManager[str]:
    return running(_serve(data_dir, workers), env, "/healthz")


def imagine_process(
    data_dir: Path, env: dict[str, str], workers: int, log: Path | None = None
) -> AbstractContextManager[tuple[str, int]]:
    return running_process(_serve(data_dir, workers), env, "/healthz", log)


def _serve(data_dir: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imagine",
        "serve",
        "--port",
        "{port}",
        "--data-dir",
        str(data_dir),
        "--workers",
        str(workers),
    ]


def create_key(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "imagine",
            "keys",
            "create",
            "--plan",
            "enterprise",
            "--credits",
            str(10**12),
            "--json",
            "--data-dir",
            str(data_dir),
        ],
        cwd=ROOT,
        env={**os.environ, **QUIET, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]
