"""`python -m bench.observability`: what metrics and JSON logs cost the hot paths.

    python -m bench.observability [--seconds 10] [--rounds 3] [--before SRC]

Two servers run side by side (SQLite, no workers), each in its own process:

- **off**: `IMAGINE_METRICS=false`, `IMAGINE_LOG_LEVEL=warning` (no access
  lines; request ids are still made and returned);
- **on**: metrics on and scraped every `--scrape-seconds` (15, a common
  Prometheus setting), JSON logs at `info` (one access line per request)
  written to a file;

and, with `--before SRC` (the `src` directory of another checkout, e.g.
`git archive <commit> src | tar -x -C /tmp/before`), a third one running
that code at its defaults. `wrk` loads `GET /v1/status` and `POST
/v1/generate` on each in turn, the order alternating every round, so
machine noise falls on all alike. Prints a Markdown table: requests per
second per round and their median, the server process's CPU time per
request (from /proc), and on/off (and on/before) ratios of both. Needs `wrk`
and Linux.

First, in this process, what the layer itself costs: `RequestTelemetry`
around a trivial ASGI app, CPU time per request with access lines off and
on, the histogram off and on (`--layer-only` stops there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.load import wrk
from imagine.observability import logs
from imagine.observability.http import RequestTelemetry

BODY = '{"prompt": "a beautiful landscape with mountains", "mode": "fun", "ratio": "1:1"}'
PATHS = ("GET /v1/status", "POST /v1/generate")


@dataclass
class Config:
    name: str
    env: dict[str, str]
    scrape: bool = False
    log: bool = False
    url: str = ""
    pid: int = 0
    key: str = ""
    task_id: str = ""
    rates: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    cpu_us: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})


@contextlib.contextmanager
def scraping(url: str, every: float) -> Iterator[None]:
    """Scrape /metrics every `every` seconds, as Prometheus would, while the block runs."""
    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(every):
                client.get(f"{url}/metrics")

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(config: Config, path: str, seconds: int, connections: int) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request."""
    before = cpu_seconds(config.pid)
    auth = {"Authorization": f"Bearer {config.key}"}
    if path.startswith("GET"):
        result = wrk(
            f"{config.url}/v1/status?task_id={config.task_id}",
            seconds=seconds,
            connections=connections,
            headers=auth,
        )
    else:
        result = wrk(
            f"{config.url}/v1/generate",
            seconds=seconds,
            connections=connections,
            method="POST",
            body=BODY,
            headers={**auth, "Content-Type": "application/json"},
        )
    cpu = cpu_seconds(config.pid) - before
    assert result.non_2xx == 0, f"{config.name} {path}: {result.non_2xx} non-2xx answers"
    return result.requests_per_second, cpu / max(1, result.requests) * 1e6


async def _trivial(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    pass


def layer_cost(requests: int = 50_000) -> list[tuple[str, float]]:
    """CPU microseconds per request that `RequestTelemetry` adds to a trivial app."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/status",
        "query_string": b"task_id=x",
        "headers": [(b"host", b"bench"), (b"authorization", b"Bearer imk_x"), (b"accept", b"*/*")],
    }

    async def per_request(app: Any) -> float:
        started = time.process_time()
        for _ in range(requests):
            await app(dict(scope), _no_body, _discard)
        return (time.process_time() - started) / requests * 1e6

    results = []
    with open(os.devnull, "w") as sink:
        for name, level, histogram in (
            ("ids and context only", "warning", False),
            ("+ request-duration histogram", "warning", True),
            ("+ JSON access line", "info", True),
        ):
            logs.configure(level, "json", sink)
            bare = asyncio.run(per_request(_trivial))
            wrapped = asyncio.run(per_request(RequestTelemetry(_trivial, metrics=histogram)))
            results.append((name, wrapped - bare))
        logs.configure("warning", "text")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.observability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=10, help="per load run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--before", type=Path, help="src directory of the code to compare with")
    parser.add_argument("--scrape-seconds", type=float, default=15.0)
    parser.add_argument("--layer-only", action="store_true")
    args = parser.parse_args()

    print("| RequestTelemetry, in process | CPU µs per request |\n|---|---|")
    for name, cost in layer_cost():
        print(f"| {name} | {cost:.1f} |")
    if args.layer_only:
        return

    configs = [
        Config("off", {"IMAGINE_METRICS": "false", "IMAGINE_LOG_LEVEL": "warning"}),
        Config(
            "on",
            {"IMAGINE_METRICS": "true", "IMAGINE_LOG_LEVEL": "info", "IMAGINE_LOG_FORMAT": "json"},
            scrape=True,
            log=True,
        ),
    ]
    if args.before is not None:
        configs.append(Config("before", {"PYTHONPATH": str(args.before.resolve())}))
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        for config in configs:
            data_dir = Path(tmp) / config.name
            config.key = servers.create_key(data_dir, config.env)["key"]
            log = Path(tmp) / f"{config.name}.log" if config.log else None
            config.url, config.pid = stack.enter_context(
                servers.imagine_process(data_dir, config.env, 0, log)
            )
            config.task_id = httpx.post(
                f"{config.url}/v1/generate",
                content=BODY,
                headers={
                    "Authorization": f"Bearer {config.key}",
                    "Content-Type": "application/json",
                },
            ).json()["data"]["task_id"]
        for round_number in range(args.rounds):
            order = configs if round_number % 2 == 0 else configs[::-1]
            for path in PATHS:
                for config in order:
                    scrape = config.scrape and args.scrape_seconds > 0
                    with (
                        scraping(config.url, args.scrape_seconds)
                        if scrape
                        else contextlib.nullcontext()
                    ):
                        rate, cpu_us = load(config, path, args.seconds, args.connections)
                    config.rates[path].append(rate)
                    config.cpu_us[path].append(cpu_us)
                    print(
                        f"round {round_number + 1}: {config.name:6} {path}: {rate:,.0f} req/s, "
                        f"{cpu_us:.1f} µs CPU/request"
                    )
        on = configs[1]
        scrapes = []
        for _ in range(3):  # the queue is read afresh once the cache (1 s) has expired
            time.sleep(1.1)
            started = time.perf_counter()
            exposition = httpx.get(f"{on.url}/metrics", timeout=30).text
            scrapes.append((time.perf_counter() - started) * 1000)
        pending = next(
            float(line.split()[-1])
            for line in exposition.splitlines()
            if line.startswith('imagine_queue_depth{engine="preview",state="pending"}')
        )
        access_lines = sum(
            1
            for line in (Path(tmp) / "on.log").read_text().splitlines()
            if '"imagine.access"' in line
        )

    print(
        f"\nImagine observability overhead · {platform.node()} · "
        f"{platform.processor() or platform.machine()} · Python {platform.python_version()} · "
        f"{args.rounds} rounds of {args.seconds} s, {args.connections} connections\n"
    )
    names = [c.name for c in configs]
    header = [
        "path",
        *(f"{n}: req/s (rounds)" for n in names),
        *(f"{n}: CPU µs/req" for n in names),
    ]
    header += ["on / off req/s", "on / off CPU"]
    if args.before:
        header += ["on / before req/s", "on / before CPU"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for path in PATHS:
        rate = {c.name: statistics.median(c.rates[path]) for c in configs}
        cpu = {c.name: statistics.median(c.cpu_us[path]) for c in configs}
        cells = [f"`{path}`"]
        cells += [
            f"{rate[c.name]:,.0f} ({', '.join(f'{r:,.0f}' for r in c.rates[path])})"
            for c in configs
        ]
        cells += [f"{cpu[n]:.1f}" for n in names]
        cells += [f"**{rate['on'] / rate['off']:.2f}×**", f"{cpu['on'] / cpu['off']:.2f}×"]
        if args.before:
            cells += [f"{rate['on'] / rate['before']:.2f}×", f"{cpu['on'] / cpu['before']:.2f}×"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nThe 'on' server wrote {access_lines:,} JSON access lines.")
    print(
        f"A scrape of /metrics with {pending:,.0f} tasks pending took "
        f"{statistics.median(scrapes):.0f} ms (median of 3; the queue read from the database)."
    )


if __name__ == "__main__":
    main()
