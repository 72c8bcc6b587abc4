"""What an operator sees of a real run, through a real Prometheus.

2 API processes and worker processes (PostgreSQL, Redis, S3 on loopback)
do a known amount of work: 12 tasks completed, one of them rescued after its
worker was SIGKILLed, 4 failed (one per forced reason), 2 cancelled, one
refused for credits, webhooks delivered, refused and retried. Debian's
Prometheus scrapes every process (APIs at /metrics, workers on their metrics
port, all behind a bearer token). Its PromQL answers must equal that work,
summed over the targets; the queue gauges must match the database and not
double across the two APIs. Then the logs of every process: JSON lines, the
request id on every request's line, the task on every task's line, and no
key, secret, token or signature anywhere.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import func, select

from imagine.db.database import Database
from imagine.db.models import Task, WebhookEvent
from imagine.ids import utcnow
from imagine.settings import load_settings

from helpers import FINISHED, image_bytes, run_db
from loopback_doubles import _Quiet, _serving
from objectstore import S3Server
from processes import (
    ImagineProcess,
    ServeProcess,
    WorkerProcess,
    cli,
    reserved_ports,
    scaled_out_env,
)
from promserver import Prometheus, running_prometheus

TOKEN = f"metrics-{secrets.token_hex(12)}"
SERVER_SECRET = secrets.token_urlsafe(32)
SIGNATURE = f"SIG{secrets.token_hex(8)}"  # in query strings that must never be logged
COST = 40
FORCED = ("moderation", "network", "file-type", "build-failed")


class Images(_Quiet):
    """An image host that holds every request until `release` is set."""

    release = threading.Event()
    png = image_bytes((200, 60, 40), size=(96, 96))

    def do_GET(self) -> None:
        released = self.release.wait(60)
        try:
            if released:
                self.reply(200, self.png, {"Content-Type": "image/png"})
            else:
                self.reply(503, b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker that asked was killed meanwhile


class Hooks(_Quiet):
    """A webhook receiver: /ok 200, /gone 410, /flaky 500."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path.partition("?")[0]
        self.seen.append(path)
        self.reply({"/ok": 200, "/gone": 410}.get(path, 500), b"")


class Calls:
    """The test's own /v1 calls, counted (each is one rate-limit decision), and
    the request ids the APIs gave them."""

    def __init__(self, apis: list[ServeProcess]) -> None:
        self.clients = [httpx.Client(base_url=api.url, timeout=30) for api in apis]
        self.v1 = 0
        self.request_ids: list[str] = []
        self._turn = 0

    def call(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        client = self.clients[self._turn % len(self.clients)]
        self._turn += 1
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        answer = client.request(method, path, headers=headers, **kwargs)
        self.v1 += path.startswith("/v1/")
        self.request_ids.append(answer.headers["x-request-id"])
        return answer

    def submit(self, key: str, body: dict[str, Any], **headers: str) -> str:
        answer = self.call("POST", "/v1/generate", key, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["data"]["task_id"])


async def statuses(db: Database) -> dict[str, int]:
    async with db.read() as session:
        rows = await session.execute(select(Task.status, func.count()).group_by(Task.status))
        return {status: int(count) for status, count in rows}


def wait_until(check: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def serving_doubles() -> Iterator[tuple[str, str]]:
    Images.release.clear()
    Hooks.seen = []
    with _serving(Images) as images, _serving(Hooks) as hooks:
        yield images, hooks


def scrape_configs(apis: list[str], workers: list[str]) -> list[dict[str, Any]]:
    auth = {"type": "Bearer", "credentials": TOKEN}
    return [
        {"job_name": "imagine-api", "authorization": auth, "static_configs": [{"targets": apis}]},
        {
            "job_name": "imagine-worker",
            "authorization": auth,
            "static_configs": [{"targets": workers}],
        },
    ]


@pytest.fixture
def worker_ports() -> Iterator[list[int]]:
    """The workers' metrics ports, named in the scrape config before the workers
    start and held all along: nothing else may answer at the victim's once it is
    killed, nor take a survivor's before it starts."""
    with reserved_ports(3) as ports:
        yield ports


def test_prometheus_sees_exactly_the_work_a_cluster_did(
    tmp_path: Path,
    postgres: Any,
    s3_server: S3Server,
    processes: list[ImagineProcess],
    worker_ports: list[int],
) -> None:
    database_url = postgres.create()
    bucket = s3_server.new_bucket()
    env = {
        **scaled_out_env(database_url, s3_server, bucket),
        "IMAGINE_ALLOW_PRIVATE_URLS": "true",
        "IMAGINE_METRICS_TOKEN": TOKEN,
        "IMAGINE_SECRET_KEY": SERVER_SECRET,  # the webhook secret is sealed with it
        "IMAGINE_WEBHOOK_RETRY_DELAYS": "0.2",
        "IMAGINE_LOG_LEVEL": "info",
    }
    settings = load_settings(database_url=database_url)
    cli_dir = str(tmp_path / "cli")

    def new_key(*args: str) -> dict[str, Any]:
        made = cli("keys", "create", "--json", "--data-dir", cli_dir, *args, env=env)
        assert made.returncode == 0, made.stderr
        return dict(json.loads(made.stdout))

    live = new_key("--plan", "pro", "--credits", str(COST * 20))
    test = new_key("--plan", "pro", "--test")
    poor = new_key("--plan", "pro", "--credits", "0")
    keys = [live["key"], test["key"], poor["key"]]

    def worker(name: str, port: int, slots: int) -> WorkerProcess:
        started = WorkerProcess(
            tmp_path / name,
            "--concurrency",
            str(slots),
            env={**env, "IMAGINE_METRICS_PORT": str(port)},
        )
        processes.append(started)
        return started

    apis = [ServeProcess(tmp_path / f"api{i}", "--no-workers", env=env) for i in range(2)]
    processes.extend(apis)
    victim = worker("victim", worker_ports[0], 1)
    calls = Calls(apis)
    hostports = [api.url.removeprefix("http://") for api in apis]
    worker_targets = [f"127.0.0.1:{port}" for port in worker_ports]

    with (
        serving_doubles() as (images, hooks),
        running_prometheus(
            tmp_path / "prometheus", scrape_configs(hostports, worker_targets)
        ) as prom,
    ):
        prom.targets_up(3)
        secret = calls.call("POST", "/v1/webhooks/secret", live["key"]).json()["data"]["secret"]
        plain = {"prompt": "a lighthouse", "duration": 1, "ratio": "1:1"}

        # The victim takes the first task and hangs on its image; two more wait.
        rescued = calls.submit(
            live["key"],
            {**plain, "images": [f"{images}/held.png?X-Amz-Signature={SIGNATURE}"]},
        )

        async def held_by_victim(db: Database) -> bool:
            async with db.read() as session:
                owner = await session.scalar(select(Task.lease_owner).where(Task.id == rescued))
            return owner is not None and f"-{victim.pid}-" in owner

        wait_until(lambda: run_db(settings, held_by_victim), "the victim to hold a task")
        waiting = [calls.submit(live["key"], plain) for _ in range(2)]

        # Queue gauges, while they are not all zero: as the database has them,
        # the same from both API processes, none from the workers.
        prom.wait_for('max(imagine_queue_depth{engine="preview",state="pending"})', 2)
        assert run_db(settings, statuses) == {"pending": 2, "processing": 1}
        assert prom.value('max(imagine_queue_depth{engine="preview",state="processing"})') == 1
        assert prom.value('count(imagine_queue_depth{engine="preview",state="pending"})') == 2
        assert prom.value('count(imagine_queue_depth{job="imagine-worker"})') is None
        prom.wait_for('max(imagine_workers_alive{engine="preview"})', 1)
        assert prom.value('min(imagine_database_up{job="imagine-api"})') == 1

        async def oldest_pending(db: Database) -> datetime:
            async with db.read() as session:
                found = await session.scalar(
                    select(func.min(Task.created_at)).where(Task.status == "pending")
                )
            assert found is not None
            return found

        age = (utcnow() - run_db(settings, oldest_pending)).total_seconds()
        reported = prom.value('max(imagine_queue_oldest_age_seconds{engine="preview"})')
        # As old as it was at the last scrape: a second of cache and one of scrape
        # interval behind, more on a loaded machine.
        assert reported is not None and 0 < reported <= age + 0.5 and reported > age - 8

        for task_id in waiting:
            cancelled = calls.call("POST", "/v1/cancel", live["key"], json={"task_id": task_id})
            assert cancelled.json()["data"]["status"] == "cancelled"
        victim.kill()

        for i in (1, 2):
            worker(f"worker{i}", worker_ports[i], 2)
        Images.release.set()
        for _ in range(7):
            calls.submit(live["key"], plain)
        for path in ("/ok", "/ok", f"/gone?token={SIGNATURE}", "/flaky"):
            calls.submit(live["key"], {**plain, "callback_url": f"{hooks}{path}"})
        for outcome in FORCED:
            calls.submit(test["key"], plain, **{"Imagine-Test-Outcome": outcome})
        refused = calls.call("POST", "/v1/generate", poor["key"], json=plain)
        assert refused.status_code == 402
        calls.call("GET", "/v1/status", live["key"], params={"task_id": rescued})
        probe = calls.call("GET", f"/files/out/x.mp4?expires=1&signature={SIGNATURE}", live["key"])
        assert probe.status_code == 404

        def all_ended() -> bool:
            state = run_db(settings, statuses)
            return set(state) <= FINISHED and sum(state.values()) == 18

        wait_until(all_ended, "every task to end")
        assert run_db(settings, statuses) == {"completed": 12, "failed": 4, "cancelled": 2}

        async def outbox_busy(db: Database) -> int:
            async with db.read() as session:
                return int(
                    await session.scalar(
                        select(func.count()).where(
                            WebhookEvent.status.in_(("pending", "delivering"))
                        )
                    )
                    or 0
                )

        wait_until(lambda: run_db(settings, outbox_busy) == 0, "the webhook outbox to drain")
        assert sorted(Hooks.seen) == ["/flaky", "/flaky", "/gone", "/ok", "/ok"]

        expected_sums = {
            'imagine_tasks_submitted_total{outcome="accepted"}': 18,
            'imagine_tasks_submitted_total{outcome="no_credits"}': 1,
            'imagine_tasks_finished_total{status="completed"}': 12,
            'imagine_tasks_finished_total{status="cancelled"}': 2,
            'imagine_tasks_finished_total{status="failed",reason="moderation"}': 1,
            'imagine_tasks_finished_total{status="failed",reason="network"}': 1,
            'imagine_tasks_finished_total{status="failed",reason="file_type"}': 1,
            'imagine_tasks_finished_total{status="failed",reason="build_failed"}': 1,
            'imagine_task_lease_expired_total{action="requeued"}': 1,
            'imagine_credits_debited_total{engine="preview"}': COST * 14,
            'imagine_credits_refunded_total{reason="cancelled"}': COST * 2,
            'imagine_webhook_deliveries_total{result="delivered"}': 2,
            'imagine_webhook_deliveries_total{result="retrying"}': 1,
            'imagine_webhook_deliveries_total{result="failed"}': 2,
            'imagine_ratelimit_decisions_total{decision="allowed"}': calls.v1,
            # Histograms: one observation per thing done.
            'http_server_request_duration_seconds_count{http_route="/v1/generate",'
            'http_response_status_code="200"}': 18,
            'http_server_request_duration_seconds_count{http_route="/v1/generate",'
            'http_response_status_code="402"}': 1,
            "imagine_task_queue_wait_seconds_count": 16,  # the survivors' claims
            'imagine_task_run_seconds_count{outcome="completed"}': 12,
            'imagine_task_run_seconds_count{outcome="failed"}': 4,
            'imagine_engine_stage_seconds_count{stage="generate"}': 12,
            'imagine_engine_stage_seconds_count{stage="upload"}': 12,
            'imagine_engine_stage_seconds_count{stage="fetch_inputs"}': 1,
            'imagine_storage_op_seconds_count{backend="s3",op="save",result="ok"}': 12,
        }
        for series, count in expected_sums.items():
            prom.wait_for(f"sum({series})", count)
        assert prom.value('sum(imagine_tasks_finished_total{status="failed"})') == 4
        assert (prom.value("sum(imagine_task_run_seconds_sum)") or 0) > 0

        # The end state: nothing waits, the survivors' 4 slots are alive.
        prom.wait_for('max(imagine_queue_depth{engine="preview",state="pending"})', 0)
        prom.wait_for('max(imagine_workers_alive{engine="preview"})', 4)
        prom.wait_for("max(imagine_webhook_outbox_oldest_age_seconds)", 0)
        prom.wait_for(f'up{{instance="{worker_targets[0]}"}}', 0)  # the victim

        check_dashboard_and_rules_against(prom, apis[0].url, worker_targets[1])

    for proc in processes:
        proc.terminate()
    logs = {proc.log.name: proc.output() for proc in processes}
    check_logs(logs, calls.request_ids, secrets=[*keys, secret, TOKEN, SIGNATURE, SERVER_SECRET])


def check_dashboard_and_rules_against(prom: Prometheus, api: str, worker: str) -> None:
    """Every query of the shipped dashboard runs, and every metric the dashboard
    and the alert rules name is one the processes export."""
    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "deploy/grafana/imagine-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for query in queries:
        prom.query(query.replace("$__rate_interval", "1m"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    exported = {
        line.split()[2]
        for url in (f"{api}/metrics", f"http://{worker}/metrics")
        for line in httpx.get(url, headers=auth).text.splitlines()
        if line.startswith("# HELP ")
    }
    rules = (root / "deploy/prometheus/imagine-alerts.yml").read_text()
    named = set(re.findall(r"\b((?:imagine|http_server|process)_[a-z_]+)\b", " ".join(queries)))
    named |= set(re.findall(r"\b((?:imagine|http_server)_[a-z_]+)\b", rules))
    for name in sorted(named):
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in exported or family in exported, name


def check_logs(logs: dict[str, str], request_ids: list[str], secrets: list[str]) -> None:
    lines = []
    for name, text in logs.items():
        for line in text.splitlines():
            assert line.startswith("{"), f"{name}: not a JSON line: {line!r}"
            entry = json.loads(line)
            assert {"time", "level", "logger", "event"} <= set(entry), line
            lines.append(entry)
    access = [entry for entry in lines if entry["logger"] == "imagine.access"]
    assert access and all(entry.get("request_id") for entry in access)
    assert all("?" not in entry["path"] for entry in access)
    logged_ids = {entry["request_id"] for entry in access}
    assert set(request_ids) <= logged_ids  # every answer the test got has its line
    submits = [e for e in access if e["route"] == "/v1/generate" and e["status"] == 200]
    assert len(submits) == 18 and all(e.get("task_id") and e.get("account_id") for e in submits)
    # A task's lines carry the task, wherever they come from (worker, dispatcher).
    for entry in lines:
        mentioned = set(re.findall(r"task_[0-9a-f]{24}", entry["event"]))
        if mentioned and entry["logger"] in ("imagine.worker", "imagine.webhooks"):
            assert mentioned == {entry.get("task_id")}, entry
    everything = "\n".join(logs.values())
    for secret in secrets:
        assert secret not in everything
    assert not re.search(r"(?i)bearer\s+(?!\[redacted\])\S", everything)
