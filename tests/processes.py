"""Real `imagine` processes for tests: servers and workers, started and killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from objectstore import S3Server

IMAGINE = [sys.executable, "-m", "imagine"]
FAST_QUEUE = {
    "IMAGINE_LEASE_SECONDS": "2",
    "IMAGINE_POLL_INTERVAL": "0.1",
    "IMAGINE_GRPC_PORT": "0",  # several servers at once; a test that speaks gRPC sets a port
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """`count` distinct loopback ports that no other bind to port 0 can take
    while the block runs, though a server that binds with SO_REUSEADDR (ours,
    uvicorn, http.server) still can: each is held by a bound, non-listening
    socket. A test that starts a process late on a port it named early (a
    worker's metrics port in a scrape config, a port a killed process left)
    would otherwise race every other server starting meanwhile."""
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        yield ports


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (separate `free_port()` calls may repeat one)."""
    with reserved_ports(count) as ports:
        return ports


def scaled_out_env(database_url: str, s3: S3Server, bucket: str) -> dict[str, str]:
    """The settings scaled-out processes share: PostgreSQL, Redis and S3 on loopback."""
    return {
        **s3.env,
        "IMAGINE_DATABASE_URL": database_url,
        "IMAGINE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "IMAGINE_STORAGE_URL": f"s3://{bucket}/out",
        "IMAGINE_RATE_LIMIT_PRO": "100000",
    }


def answers(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll `url` until it answers 200 (True), or its process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMAGINE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


class ImagineProcess:
    """`imagine <args>` in the background, its output in a log file next to the data."""

    def __init__(self, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{args[0]}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*IMAGINE, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **FAST_QUEUE, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"never printed {text!r}:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


class ServeProcess(ImagineProcess):
    """`imagine serve` on a free port, returned once `/healthz` answers."""

    def __init__(
        self, data_dir: Path, *extra: str, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        super().__init__(
            ["serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
            data_dir.parent / "logs",
            env,
        )
        # Generous: importing torch for the diffusers engine takes long on a busy machine.
        if not answers(f"{self.url}/healthz", self.process, timeout=60):
            self.kill()  # never leave a half-started server behind
            raise RuntimeError(f"serve did not start:\n{self.output()}")


class WorkerProcess(ImagineProcess):
    """`imagine worker`, returned once it reports its slots."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        super().__init__(
            ["worker", "--data-dir", str(data_dir), *extra], data_dir.parent / "logs", env
        )
        self.wait_for_output("Imagine worker:")
