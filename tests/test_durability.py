"""The real `imagine serve` process: first start, SIGKILL mid-task, restart, refunds."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from helpers import wait_for_task
from processes import IMAGINE, ImagineProcess, ServeProcess, cli


def ledger_kinds(data_dir: Path, task_id: str) -> list[str]:
    with sqlite3.connect(data_dir / "imagine.db") as conn:
        rows = conn.execute("SELECT kind FROM ledger WHERE task_id = ?", (task_id,)).fetchall()
    return sorted(r[0] for r in rows)


def test_first_start_prints_a_development_key_once(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    data_dir = tmp_path / "data"
    first = ServeProcess(data_dir)
    processes.append(first)
    match = re.search(r"API key \(shown once, keep it\): (imk_\w+)", first.output())
    assert match, first.output()
    key = match.group(1)
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {key}"}) as client:
        task_id = client.post("/v1/generate", json={"prompt": "hello", "duration": 1}).json()[
            "data"
        ]["task_id"]
        assert wait_for_task(client, task_id)["status"] == "completed"
    first.terminate()

    second = ServeProcess(data_dir)
    processes.append(second)
    assert "imk_" not in second.output()
    listed = [
        json.loads(line)
        for line in cli("keys", "list", "--json", "--data-dir", str(data_dir)).stdout.splitlines()
    ]
    assert [item["plan"] for item in listed] == ["free"]
    assert listed[0]["balance"] == 1000 - 40
    assert key not in json.dumps(listed)


def test_sigkill_mid_task_then_restart_completes_once_charged_once(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    data_dir = tmp_path / "data"
    created = cli(
        "keys", "create", "--plan", "pro", "--credits", "100", "--json", "--data-dir", str(data_dir)
    )
    assert created.returncode == 0, created.stderr
    issued: dict[str, Any] = json.loads(created.stdout)
    headers = {"Authorization": f"Bearer {issued['key']}"}

    first = ServeProcess(data_dir)
    processes.append(first)
    with httpx.Client(base_url=first.url, headers=headers) as client:
        task_id = client.post(
            "/v1/generate",
            json={"prompt": "long enough to be killed", "duration": 15, "resolution": "720p"},
        ).json()["data"]["task_id"]
        deadline = time.monotonic() + 20
        while (
            client.get("/v1/status", params={"task_id": task_id}).json()["data"]["status"]
            != "processing"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    first.kill()

    second = ServeProcess(data_dir)
    processes.append(second)
    with httpx.Client(base_url=second.url, headers=headers) as client:
        data = wait_for_task(client, task_id, timeout=120)
    assert data["status"] == "completed", data
    assert data["consumed_credits"] == 40
    with sqlite3.connect(data_dir / "imagine.db") as conn:
        attempts, balance = conn.execute(
            "SELECT t.attempts, a.balance FROM tasks t JOIN accounts a ON a.id = t.account_id "
            "WHERE t.id = ?",
            (task_id,),
        ).fetchone()
    assert attempts == 2
    assert balance == 60
    assert ledger_kinds(data_dir, task_id) == ["debit"]
    assert len(list((data_dir / "files" / task_id).glob("*.mp4"))) == 1


def test_keys_and_credits_commands_work_while_serving(
    tmp_path: Path, processes: list[ImagineProcess]
) -> None:
    data_dir = tmp_path / "data"
    serving = ServeProcess(data_dir, env={"IMAGINE_KEY_CACHE_SECONDS": "1"})
    processes.append(serving)
    created = json.loads(
        cli(
            "keys",
            "create",
            "--plan",
            "enterprise",
            "--credits",
            "0",
            "--name",
            "acme",
            "--json",
            "--data-dir",
            str(data_dir),
        ).stdout
    )
    headers = {"Authorization": f"Bearer {created['key']}"}
    with httpx.Client(base_url=serving.url, headers=headers) as client:
        assert client.post("/v1/generate", json={"prompt": "x"}).status_code == 402
        granted = cli("credits", "grant", created["account_id"], "80", "--data-dir", str(data_dir))
        assert granted.returncode == 0 and "balance 80" in granted.stdout
        ok = client.post("/v1/generate", json={"prompt": "x", "duration": 1})
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit"] == "5000"
        revoked = cli("keys", "revoke", created["key_id"], "--data-dir", str(data_dir))
        assert revoked.returncode == 0
        time.sleep(1.05)  # the server remembers a valid key for IMAGINE_KEY_CACHE_SECONDS
        assert client.get("/v1/status", params={"task_id": "x"}).status_code == 401
    assert cli("keys", "revoke", created["key_id"], "--data-dir", str(data_dir)).returncode == 1
    assert cli("credits", "grant", "acct_missing", "5", "--data-dir", str(data_dir)).returncode == 1


def test_bad_settings_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [*IMAGINE, "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IMAGINE_WORKERS": "lots", "IMAGINE_RATE_LIMIT_PRO": "-3"},
    )
    assert result.returncode == 2
    assert "IMAGINE_WORKERS" in result.stderr
    assert "IMAGINE_RATE_LIMIT_PRO" in result.stderr
