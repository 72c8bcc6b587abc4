"""`python -m bench`: the service's hot paths as ratios to a baseline measured in
the same run, a gRPC poll against an HTTP one, submit-to-claim latency,
preview engine speed, growth, the console's pages with 10,000 tasks in the
account, and the moderation stage.

    python -m bench [--seconds 10] [--connections 64] [--postgres] [--big 1000000]
        [--skip http claim preview growth console moderation]

Prints Markdown tables (the ones in BENCHMARKS.md). Needs `wrk` (Debian). The
console section alone: `python -m bench.console [--postgres]`.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench import console, growth, grpc_poll, latency, moderation, servers
from bench.load import LoadResult, wrk
from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.preview import PreviewEngine

POLLED_TASKS = 256
BODY = '{"prompt": "a beautiful landscape with mountains", "mode": "fun", "ratio": "1:1"}'


def hot_paths(args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    with servers.baseline() as url:
        base_get = wrk(f"{url}/v1/status", seconds=args.seconds, connections=args.connections)
        base_post = wrk(
            f"{url}/v1/generate",
            seconds=args.seconds,
            connections=args.connections,
            method="POST",
            body=BODY,
            headers={"Content-Type": "application/json"},
        )
    env, database = servers.database_env(args.postgres)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        key = servers.create_key(data_dir, env)
        auth = {"Authorization": f"Bearer {key['key']}"}
        with servers.imagine(data_dir, env, workers=0) as url:
            task_id = httpx.post(
                f"{url}/v1/generate",
                content=BODY,
                headers={**auth, "Content-Type": "application/json"},
            ).json()["data"]["task_id"]
            status = wrk(
                f"{url}/v1/status?task_id={task_id}",
                seconds=args.seconds,
                connections=args.connections,
                headers=auth,
            )
            # Many clients, each polling its own task (one account, so every
            # poll passes the same gate as above).
            with httpx.Client(base_url=url, headers=auth) as client:
                many = [
                    client.post(
                        "/v1/generate", content=BODY, headers={"Content-Type": "application/json"}
                    ).json()["data"]["task_id"]
                    for _ in range(POLLED_TASKS)
                ]
            status_many = wrk(
                url,
                seconds=args.seconds,
                connections=args.connections,
                headers=auth,
                paths=[f"/v1/status?task_id={task}" for task in many],
            )
            submit = wrk(
                f"{url}/v1/generate",
                seconds=args.seconds,
                connections=args.connections,
                method="POST",
                body=BODY,
                headers={**auth, "Content-Type": "application/json"},
            )
    if database is not None:
        database.drop()

    def row(name: str, result: LoadResult, base: LoadResult | None) -> tuple[str, str]:
        ratio = (
            f" ({result.requests_per_second / base.requests_per_second:.2f}× baseline)"
            if base
            else ""
        )
        bad = f", {result.non_2xx} non-2xx" if result.non_2xx else ""
        return name, (
            f"{result.requests_per_second:,.0f} req/s{ratio}; p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms{bad}"
        )

    rows += [
        row("baseline GET (constant JSON)", base_get, None),
        row("baseline POST (constant JSON)", base_post, None),
        row("GET /v1/status (one task)", status, base_get),
        row(f"GET /v1/status ({POLLED_TASKS} tasks in turn)", status_many, base_get),
        row("POST /v1/generate", submit, base_post),
    ]


def preview_speed(rows: list[tuple[str, str]]) -> None:
    engine = PreviewEngine()
    for resolution, (width, height) in (("480p", (848, 480)), ("720p", (1280, 720))):
        job = GenerationJob(
            task_id="bench",
            prompt="a beautiful landscape with mountains",
            mode="fun",
            ratio="16:9",
            resolution=resolution,
            width=width,
            height=height,
            duration=6,
            seed=1,
        )
        times = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                asyncio.run(engine.generate(job, Path(tmp), JobControl()))
                times.append(time.perf_counter() - start)
        best = min(times)
        rows.append(
            (
                f"preview engine, 6 s 16:9 {resolution}",
                f"{best:.2f} s ({6 / best:.1f}× real time; best of 3)",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=10, help="per load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--big", type=int, default=1_000_000, help="tasks in the large database")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["http", "grpc", "claim", "preview", "growth", "console", "moderation"],
    )
    args = parser.parse_args()

    rows: list[tuple[str, str]] = []
    if "http" not in args.skip:
        hot_paths(args, rows)
    if "grpc" not in args.skip:
        rows += grpc_poll.compare(args.seconds, args.connections)
    if "claim" not in args.skip:
        env, database = servers.database_env(args.postgres)
        samples = latency.submit_to_claim(env)
        if database is not None:
            database.drop()
        rows.append(
            (
                "submit → processing (idle worker)",
                f"p50 {statistics.median(samples):.1f} ms, "
                f"p99 {latency.percentile(samples, 99):.1f} ms ({len(samples)} tasks)",
            )
        )
    if "preview" not in args.skip:
        preview_speed(rows)
    if "growth" not in args.skip:
        rows += growth.compare(args, 10_000, args.big)

    print(
        f"\nImagine benchmarks · {platform.node()} · {platform.processor() or platform.machine()}"
        f" · Python {platform.python_version()} · {'PostgreSQL' if args.postgres else 'SQLite'}\n"
    )
    if rows:
        print("| measure | result |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        print()
    if "console" not in args.skip:
        print(console.run(postgres=args.postgres))
    if "moderation" not in args.skip:
        print(f"\n{moderation.run()}")


if __name__ == "__main__":
    main()
