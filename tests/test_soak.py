"""The soak (`python -m bench.soak`) in a short version: the cluster of two API
and two worker processes on PostgreSQL and Redis, under steady submits,
polls, cancels and webhooks for 15 s. What must hold at any length is checked
here: every task ended once, the ledger equals every balance, nothing charged
twice or refunded wrongly, every webhook delivered, no process died, no
request failed. Flat memory and file counts and steady p99 need the long run
(BENCHMARKS.md records one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.alone  # a fixed rate of requests, answered in time

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_loses_nothing_and_charges_nothing_twice() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    short = ["--seconds", "15", "--rate", "3", "--warmup", "5", "--sample", "1", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", *short],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    checks = result["checks"]
    assert result["errors"] == []
    assert checks["tasks"] >= 30 and checks["still_open"] == 0
    assert sum(checks["statuses"].values()) == checks["tasks"]
    assert set(checks["statuses"]) <= {"completed", "cancelled"}, checks["statuses"]
    assert checks["balances_not_ledger"] == 0
    assert checks["charged_twice"] == checks["refunds_wrong"] == 0
    assert checks["webhooks_undelivered"] == 0
    assert checks["webhooks_received"] == checks["with_callback"] > 0
    assert checks["processes_alive"]
    assert set(result["processes"]) == {"api0", "api1", "worker0", "worker1"}
