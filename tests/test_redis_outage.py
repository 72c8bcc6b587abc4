"""Redis (the shared rate-limit store) out of reach, then back, without a restart.

Two API servers share one database and reach the real Redis through a TCP
relay the test cuts: one answers 503 while Redis is away (the default), the
other serves without limits (`IMAGINE_RATE_LIMIT_FAIL_OPEN`). Both count
again once it is back. Nothing answered 503 is charged; the ledger equals
the balance.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import RunningServer
from helpers import assert_error, balance_and_ledger, run_db
from loopback_doubles import TcpCut

pytestmark = pytest.mark.alone  # recovery is held to seconds

COST = 40
REDIS_PORT = 6379
RECOVERY_BOUND = 10.0


@pytest.fixture
def redis_relay() -> Iterator[TcpCut]:
    relay = TcpCut(REDIS_PORT)
    yield relay
    relay.close()


def submit(client: httpx.Client) -> httpx.Response:
    return client.post("/v1/generate", json={"prompt": "redis", "duration": 1})


def test_a_redis_outage_is_503_or_fails_open_and_recovers_without_a_restart(
    server_factory: Any, redis_relay: TcpCut
) -> None:
    redis_url = f"redis://127.0.0.1:{redis_relay.port}/0"
    closed: RunningServer = server_factory(workers=0, redis_url=redis_url)
    database = closed.settings.resolved_database_url
    open_: RunningServer = server_factory(
        workers=0, redis_url=redis_url, rate_limit_fail_open=True, database_url=database
    )
    issued = closed.new_key(credits=COST * 100)
    accepted = 0
    with closed.client(issued.key) as strict, open_.client(issued.key) as lenient:
        for client in (strict, lenient):
            answer = submit(client)
            assert answer.status_code == 200 and "X-RateLimit-Remaining" in answer.headers
            accepted += 1

        redis_relay.cut()
        for _ in range(3):
            assert_error(submit(strict), 503, "SERVICE_UNAVAILABLE")
            assert_error(strict.get("/v1/account"), 503, "SERVICE_UNAVAILABLE")
            answer = submit(lenient)
            assert answer.status_code == 200, answer.text
            assert "X-RateLimit-Remaining" not in answer.headers  # served without a count
            accepted += 1

        redis_relay.restore()
        deadline = time.monotonic() + RECOVERY_BOUND
        while (answer := submit(strict)).status_code == 503:
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            time.sleep(0.2)
        assert answer.status_code == 200 and "X-RateLimit-Remaining" in answer.headers
        accepted += 1
        answer = submit(lenient)
        assert answer.status_code == 200 and "X-RateLimit-Remaining" in answer.headers
        accepted += 1

    balance, total = run_db(closed.settings, lambda db: balance_and_ledger(db, issued.account_id))
    assert balance == total == COST * (100 - accepted)
