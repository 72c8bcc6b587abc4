"""A real Prometheus (Debian's `prometheus` package) on loopback, for tests.

Started with a temporary configuration (JSON, which is YAML) and data
directory, scraping every second; queried through its HTTP API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from processes import answers, free_port

SCRAPE_SECONDS = 1


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a bad expression)."""
        answer = self.http.get("/api/v1/query", params={"query": promql})
        body = answer.json()
        if body.get("status") != "success":
            raise AssertionError(f"{promql}: {body.get('error')}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, promql: str) -> float | None:
        """The value of a query that yields at most one series; None when it yields none."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql} gave {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, expected: float, timeout: float = 20) -> None:
        """Until the query gives `expected` (a scrape or two after the fact)."""
        deadline = time.monotonic() + timeout
        seen: float | None = None
        while time.monotonic() < deadline:
            seen = self.value(promql)
            if seen == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{promql} is {seen}, expected {expected}")

    def targets_up(self, count: int, timeout: float = 30) -> None:
        self.wait_for("count(up == 1)", count, timeout)


@contextmanager
def running_prometheus(workdir: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError(
            "Debian's prometheus package is not installed (scripts/test installs it)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_SECONDS}s",
                    "scrape_timeout": f"{SCRAPE_SECONDS}s",
                    "evaluation_interval": f"{SCRAPE_SECONDS}s",
                },
                "scrape_configs": scrape_configs,
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not answers(f"{url}/-/ready", process, timeout=30):
            raise RuntimeError(
                "prometheus did not start:\n" + (workdir / "prometheus.log").read_text()
            )
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
