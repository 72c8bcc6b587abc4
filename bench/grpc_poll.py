"""What one poll costs: xAI's `GetDeferredVideo` (gRPC) against our
`GET /v1/status` (HTTP), on one `imagine serve` process in the same run, and
each protocol's ceiling (a constant answer on the same stack) beside them.

    python -m bench.grpc_poll [--seconds 10] [--connections 64]

A poll's cost is the server process's CPU time (user + system, from /proc)
over the polls it answered, which the load generators do not add to: they
run in processes of their own (`wrk` for HTTP; for gRPC, this module with
`--drive`: the SDK's synchronous stub one poll at a time, `grpc.aio` for
many). Each row also gives the round trip as the client saw it. Both poll the
same task, pending and then completed (a completed one signs a file URL),
one at a time (as one SDK client polls) and with many in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import httpx

from bench import servers
from bench.load import wrk

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True)
class Polls:
    count: int
    seconds: float
    cpu_seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server CPU microseconds per poll."""
        return self.cpu_seconds / self.count * 1e6


Load = Callable[[], tuple[int, float, float, float]]
"""Runs the polls; returns (polls, seconds, p50 ms, p99 ms)."""


def measured(pid: int, load: Load) -> Polls:
    before = cpu_seconds(pid)
    count, seconds, p50, p99 = load()
    return Polls(count, seconds, cpu_seconds(pid) - before, p50, p99)


def http_polls(pid: int, url: str, key: str, task_id: str, seconds: int, in_flight: int) -> Polls:
    def load() -> tuple[int, float, float, float]:
        result = wrk(
            f"{url}/v1/status?task_id={task_id}",
            seconds=seconds,
            connections=in_flight,
            headers={"Authorization": f"Bearer {key}"},
        )
        assert result.non_2xx == 0, result
        count = round(result.requests_per_second * seconds)
        return count, float(seconds), result.p50_ms, result.p99_ms

    return measured(pid, load)


def grpc_polls(
    pid: int, target: str, key: str, task_id: str, seconds: int, in_flight: int
) -> Polls:
    def load() -> tuple[int, float, float, float]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.grpc_poll",
                "--drive",
                json.dumps([target, key, task_id, seconds, in_flight]),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
        count, elapsed, p50, p99 = json.loads(out)
        return int(count), float(elapsed), float(p50), float(p99)

    return measured(pid, load)


def drive(target: str, key: str, task_id: str, seconds: float, in_flight: int) -> None:
    """The gRPC load, as `wrk` makes the HTTP one: `in_flight` pollers, each sending
    its next `GetDeferredVideo` as soon as the last is answered (one poller: the
    SDK's own synchronous stub; more: `grpc.aio` on four channels). Prints
    `[polls, seconds, p50 ms, p99 ms]`."""
    import grpc
    from xai_sdk.proto import video_pb2, video_pb2_grpc

    metadata = (("authorization", f"Bearer {key}"),)
    request = video_pb2.GetDeferredVideoRequest(request_id=task_id)
    times: list[float] = []

    def one_at_a_time() -> float:
        with grpc.insecure_channel(target) as channel:
            stub = video_pb2_grpc.VideoStub(channel)
            start = time.monotonic()
            stop = start + seconds
            while (sent := time.monotonic()) < stop:
                stub.GetDeferredVideo(request, metadata=metadata)
                times.append(time.monotonic() - sent)
            return time.monotonic() - start

    async def many() -> float:
        channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
        stubs = [video_pb2_grpc.VideoStub(channel) for channel in channels]
        start = time.monotonic()
        stop = start + seconds

        async def poller(stub: video_pb2_grpc.VideoStub) -> None:
            while (sent := time.monotonic()) < stop:
                await stub.GetDeferredVideo(request, metadata=metadata)
                times.append(time.monotonic() - sent)

        await asyncio.gather(*(poller(stubs[n % len(stubs)]) for n in range(in_flight)))
        elapsed = time.monotonic() - start
        for channel in channels:
            await channel.close()
        return elapsed

    elapsed = one_at_a_time() if in_flight == 1 else asyncio.run(many())
    times.sort()
    p50, p99 = times[len(times) // 2], times[min(len(times) - 1, len(times) * 99 // 100)]
    print(json.dumps([len(times), elapsed, p50 * 1e3, p99 * 1e3]))


def submitted(url: str, key: str, *, wait: bool = False) -> str:
    """A task's id; with `wait`, once it has completed."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as client:
        body = {"prompt": "polled", "duration": 1}
        task_id = str(client.post("/v1/generate", json=body).json()["data"]["task_id"])

        def status() -> str:
            answer = client.get("/v1/status", params={"task_id": task_id})
            return str(answer.json()["data"]["status"])

        while wait and status() != "completed":
            time.sleep(0.1)
    return task_id


def summary(polls: Polls, reference: Polls | None = None, against: str = "") -> str:
    text = (
        f"p50 {polls.p50_ms:.2f} ms, p99 {polls.p99_ms:.2f} ms; "
        f"{polls.cpu_us:,.0f} µs server CPU per poll; {polls.per_second:,.0f} polls/s"
    )
    if reference is not None:
        text += (
            f" (**{polls.cpu_us / reference.cpu_us:.2f}×** {against}'s CPU, "
            f"{polls.p50_ms / reference.p50_ms:.2f}× its p50)"
        )
    return text


@contextmanager
def grpc_baseline() -> Iterator[tuple[str, int]]:
    """`bench.baseline_grpc` on a free port: (target, process id)."""
    port = servers.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_grpc", str(port)],
        cwd=servers.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(30)


def compare(seconds: int, connections: int) -> list[tuple[str, str]]:
    """The rows for BENCHMARKS.md. For each load (one poll at a time, as one
    SDK client polls; `connections` in flight), the two protocols' ceilings
    (constant answers on the same stacks), then both polls of one server, on a
    pending and on a completed task."""
    loads = {1: "one at a time", connections: f"{connections} in flight"}
    rows: list[tuple[str, str]] = []
    for in_flight, load in loads.items():
        with servers.baseline_process() as (url, pid):
            http_ceiling = http_polls(pid, url, "none", "task_1", seconds, in_flight)
        with grpc_baseline() as (target, pid):
            grpc_ceiling = grpc_polls(pid, target, "none", "task_1", seconds, in_flight)
        rows += [
            (f"baseline GET (constant JSON), {load}", summary(http_ceiling)),
            (
                f"baseline gRPC (constant message), {load}",
                summary(grpc_ceiling, http_ceiling, "the baseline GET"),
            ),
        ]
    grpc_port = servers.free_port()
    env = {"IMAGINE_GRPC_PORT": str(grpc_port)}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = servers.create_key(data_dir, env)["key"]
        cases: dict[str, str] = {}
        with servers.imagine(data_dir, env, workers=1) as url:  # renders one video
            cases["completed"] = submitted(url, key, wait=True)
        # Measured on a server without workers, so the pending task stays pending.
        with servers.imagine_process(data_dir, env, workers=0) as (url, pid):
            cases["pending"] = submitted(url, key)
            target = f"127.0.0.1:{grpc_port}"
            for (in_flight, load), state in product(loads.items(), ("pending", "completed")):
                http = http_polls(pid, url, key, cases[state], seconds, in_flight)
                grpc = grpc_polls(pid, target, key, cases[state], seconds, in_flight)
                rows += [
                    (f"`GET /v1/status`, {state} task, {load}", summary(http)),
                    (
                        f"`GetDeferredVideo`, {state} task, {load}",
                        summary(grpc, http, "`GET /v1/status`"),
                    ),
                ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_poll", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per load run")
    parser.add_argument("--connections", type=int, default=64, help="polls in flight")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(*json.loads(args.drive))
        return
    print("| measure | result |\n|---|---|")
    for name, value in compare(args.seconds, args.connections):
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
