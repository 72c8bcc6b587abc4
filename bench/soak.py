"""`python -m bench.soak`: the scaled-out cluster under steady load for a while.

    python -m bench.soak [--seconds 600] [--rate 8] [--warmup 60] [--json]

Two API processes (`imagine serve --no-workers`) and two worker processes
(`imagine worker --concurrency 2`) on a fresh PostgreSQL database, Redis for
rate limits and one shared data dir for files, all on loopback. At a fixed
rate it submits (round robin over the APIs and a few accounts; one submit in
four with a `callback_url` to a receiver of our own, one in five cancelled a
moment later) and polls the status of recent tasks three times as often.
Every `--sample` seconds it reads each process's resident memory and open
file count from /proc.

At the end it stops submitting, waits for every task to end, and checks what
must hold whatever the load: every task ended once, the ledger equals every
balance, every webhook was delivered. It prints the memory and file growth
of each process after the warm-up (the highest sample of the first window
against that of the last), p99 latency per window, and those checks
(`--json`: the same as one JSON object, for the test suite's short run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import servers
from bench.pg import TemporaryDatabase
from bench.servers import QUIET, ROOT, free_port

ACCOUNTS = 4
BODY = {"prompt": "soak", "duration": 1, "resolution": "480p"}
REDIS_URL = os.environ.get("IMAGINE_BENCH_REDIS", "redis://127.0.0.1:6379/0")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss KiB, fds)

    def sample(self, now: float) -> None:
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        self.samples.append((now, rss, len(os.listdir(f"/proc/{pid}/fd"))))

    def peaks(self, start: float, end: float, window: float) -> list[tuple[int, int]]:
        """The highest resident memory (KiB) and open file count of each window
        from the end of the warm-up to the end of the load: connection pools
        grow and shrink with the load from one sample to the next, a leak
        raises the peaks window after window. Samples taken after the load
        stopped are left out, so the last window is measured under load."""
        settled = [s for s in self.samples if start <= s[0] < end] or self.samples[-1:]
        windows: dict[int, list[tuple[float, int, int]]] = {}
        for sample in settled:
            windows.setdefault(int((sample[0] - start) // window), []).append(sample)
        return [
            (max(s[1] for s in samples), max(s[2] for s in samples))
            for _, samples in sorted(windows.items())
        ]

    def growth(self, start: float, end: float, window: float) -> dict[str, Any]:
        """The last window's peaks against the first's after the warm-up."""
        peaks = self.peaks(start, end, window)
        (rss0, fds0), (rss1, fds1) = peaks[0], peaks[-1]
        return {
            "rss_mib": [round(rss0 / 1024, 1), round(rss1 / 1024, 1)],
            "rss_growth": round(rss1 / rss0 - 1, 3),
            "fds": [fds0, fds1],
            "fd_growth": round(fds1 / fds0 - 1, 3),
            "rss_mib_by_window": [round(rss / 1024, 1) for rss, _ in peaks],
            "fds_by_window": [fds for _, fds in peaks],
        }


class Receiver:
    """A webhook endpoint that answers 200 and counts deliveries per task."""

    def __init__(self) -> None:
        seen: dict[str, int] = {}
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                task_id = json.loads(body)["data"]["task_id"]
                seen[task_id] = seen.get(task_id, 0) + 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _imagine(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "imagine", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API at {url} did not start") from None
            time.sleep(0.1)


@dataclass
class Load:
    apis: list[str]
    keys: list[str]
    callback: str
    rate: float
    latencies: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {"submit": [], "status": [], "cancel": []}
    )
    tasks: list[str] = field(default_factory=list)
    with_callback: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    async def run(self, seconds: float, started: float) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            pending: set[asyncio.Task[None]] = set()
            n = 0
            while time.monotonic() < started + seconds:
                job = asyncio.create_task(self._one(client, n, started))
                pending.add(job)
                job.add_done_callback(pending.discard)
                n += 1
                await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
            await asyncio.gather(*pending)

    async def _timed(
        self, client: httpx.AsyncClient, kind: str, started: float, **request: Any
    ) -> httpx.Response:
        sent = time.monotonic()
        answer = await client.request(**request)
        self.latencies[kind].append((sent - started, time.monotonic() - sent))
        if answer.status_code not in (200, 409):  # 409: a cancel after the end
            self.errors.append(f"{kind} {answer.status_code} {answer.text[:200]}")
        return answer

    async def _one(self, client: httpx.AsyncClient, n: int, started: float) -> None:
        api, key = self.apis[n % len(self.apis)], self.keys[n % len(self.keys)]
        auth = {"Authorization": f"Bearer {key}"}
        body = dict(BODY, callback_url=self.callback) if n % 4 == 0 else BODY
        answer = await self._timed(
            client,
            "submit",
            started,
            method="POST",
            url=f"{api}/v1/generate",
            json=body,
            headers=auth,
        )
        if answer.status_code != 200:
            return
        task_id = answer.json()["data"]["task_id"]
        self.tasks.append(task_id)
        if n % 4 == 0:
            self.with_callback.add(task_id)
        for _poll in range(3):
            await asyncio.sleep(0.3)
            await self._timed(
                client,
                "status",
                started,
                method="GET",
                url=f"{api}/v1/status",
                params={"task_id": task_id},
                headers=auth,
            )
        if n % 5 == 0:
            await self._timed(
                client,
                "cancel",
                started,
                method="POST",
                url=f"{api}/v1/cancel",
                json={"task_id": task_id},
                headers=auth,
            )


def _p99_by_window(points: list[tuple[float, float]], window: float) -> list[float]:
    buckets: dict[int, list[float]] = {}
    for at, took in points:
        buckets.setdefault(int(at // window), []).append(took)
    return [
        round(statistics.quantiles(values, n=100)[98] * 1000, 1) if len(values) >= 2 else 0.0
        for _, values in sorted(buckets.items())
    ]


async def _settle(database: str, tasks: list[str], wait: float) -> dict[str, Any]:
    """Wait for every task to end, then read the checks from the database."""
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        deadline = time.monotonic() + wait
        while True:
            open_ = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE status IN ('pending', 'processing')"
            )
            if open_ == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        statuses = dict(await conn.fetch("SELECT status, count(*) FROM tasks GROUP BY status"))
        mismatched = await conn.fetchval(
            """SELECT count(*) FROM accounts a
               WHERE a.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger l
                                   WHERE l.account_id = a.id)"""
        )
        charged_twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT task_id FROM ledger WHERE kind = 'debit' "
            "GROUP BY task_id HAVING count(*) > 1) twice"
        )
        refunds_wrong = await conn.fetchval(
            "SELECT count(*) FROM tasks t WHERE t.cost > 0 AND (t.status <> 'completed') <> "
            "EXISTS (SELECT 1 FROM ledger l WHERE l.task_id = t.id AND l.kind = 'refund')"
        )
        undelivered = await conn.fetchval(
            "SELECT count(*) FROM webhook_events WHERE status <> 'delivered'"
        )
    finally:
        await conn.close()
    return {
        "tasks": len(tasks),
        "statuses": {str(k): int(v) for k, v in statuses.items()},
        "still_open": int(open_),
        "balances_not_ledger": int(mismatched),
        "charged_twice": int(charged_twice),
        "refunds_wrong": int(refunds_wrong),
        "webhooks_undelivered": int(undelivered),
    }


def run(seconds: float, rate: float, warmup: float, sample_every: float) -> dict[str, Any]:
    database = TemporaryDatabase()
    receiver = Receiver()
    procs: list[Proc] = []
    # The processes stop before their data dir is removed (they may still
    # be writing to it).
    with tempfile.TemporaryDirectory() as tmp:
        try:
            data = Path(tmp)
            env = {
                **os.environ,
                **QUIET,
                "IMAGINE_DATABASE_URL": database.url,
                "IMAGINE_REDIS_URL": REDIS_URL,
                "IMAGINE_SECRET_KEY": os.urandom(24).hex(),
                "IMAGINE_ALLOW_PRIVATE_URLS": "true",
                "IMAGINE_POLL_INTERVAL": "0.1",
            }
            subprocess.run(
                [sys.executable, "-m", "imagine", "db", "upgrade", "--data-dir", str(data)],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
            keys = [servers.create_key(data, env)["key"] for _ in range(ACCOUNTS)]
            apis = []
            for i in range(2):
                port = free_port()
                process = _imagine(
                    "serve",
                    "--no-workers",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data),
                    env=env,
                )
                procs.append(Proc(f"api{i}", process))
                apis.append(f"http://127.0.0.1:{port}")
                _wait_healthy(apis[-1], process)
            for i in range(2):
                worker = _imagine("worker", "--concurrency", "2", "--data-dir", str(data), env=env)
                procs.append(Proc(f"worker{i}", worker))
            for key in keys:
                httpx.post(
                    f"{apis[0]}/v1/webhooks/secret",
                    json={},
                    headers={"Authorization": f"Bearer {key}"},
                ).raise_for_status()

            window = max(seconds / 10, 1.0)
            load = Load(apis, keys, receiver.url, rate)
            started = time.monotonic()

            async def sampled() -> None:
                running = asyncio.create_task(load.run(seconds, started))
                while not running.done():
                    for proc in procs:
                        proc.sample(time.monotonic() - started)
                    await asyncio.wait({running}, timeout=sample_every)
                await running

            asyncio.run(sampled())
            checks = asyncio.run(_settle(database.url, load.tasks, wait=120))
            time.sleep(2)  # the last webhooks
            checks["webhooks_undelivered"] = asyncio.run(_settle(database.url, [], wait=0))[
                "webhooks_undelivered"
            ]
            checks["webhooks_received"] = sum(
                1 for task in load.with_callback if receiver.seen.get(task)
            )
            checks["with_callback"] = len(load.with_callback)
            checks["processes_alive"] = all(p.process.poll() is None for p in procs)
            return {
                "seconds": seconds,
                "rate": rate,
                "warmup": warmup,
                "processes": {p.name: p.growth(warmup, seconds, window) for p in procs},
                "p99_ms_by_window": {
                    kind: _p99_by_window(points, window) for kind, points in load.latencies.items()
                },
                "window_seconds": window,
                "errors": load.errors[:20],
                "checks": checks,
            }
        finally:
            for proc in procs:
                proc.process.terminate()
            for proc in procs:
                proc.process.wait(60)
            receiver.close()
            database.drop()


def _print(result: dict[str, Any]) -> None:
    print(
        f"\nSoak: {result['seconds']:.0f} s at {result['rate']} submits/s "
        f"(warm-up {result['warmup']:.0f} s) · load average {os.getloadavg()[0]:.2f}\n"
    )
    print(
        f"Each figure is the highest sample of a {result['window_seconds']:.0f} s window: "
        "the first after the warm-up → the last.\n"
    )
    print("| process | RSS after warm-up → end | growth | open files | growth |")
    print("|---|---|---|---|---|")
    for name, g in result["processes"].items():
        print(
            f"| {name} | {g['rss_mib'][0]} → {g['rss_mib'][1]} MiB | {g['rss_growth']:+.1%} "
            f"| {g['fds'][0]} → {g['fds'][1]} | {g['fd_growth']:+.1%} |"
        )
    print(f"\nPeaks per {result['window_seconds']:.0f} s window after the warm-up:\n")
    for name, g in result["processes"].items():
        memory = ", ".join(str(v) for v in g["rss_mib_by_window"])
        files = ", ".join(str(v) for v in g["fds_by_window"])
        print(f"- {name}: RSS (MiB) {memory}; open files {files}")
    print(f"\np99 latency (ms) per {result['window_seconds']:.0f} s window:\n")
    for kind, values in result["p99_ms_by_window"].items():
        print(f"- {kind}: {', '.join(str(v) for v in values)}")
    print("\nChecks:\n")
    for name, value in result["checks"].items():
        print(f"- {name}: {value}")
    if result["errors"]:
        print("\nErrors (first 20):", *result["errors"], sep="\n- ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=8, help="submits per second")
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.seconds, args.rate, args.warmup, args.sample)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)


if __name__ == "__main__":
    main()
