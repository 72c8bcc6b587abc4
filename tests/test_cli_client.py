"""`imagine generate | status | download`, run as a user runs them: a subprocess
against a real server on loopback (SQLite only: the commands are a client)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagine.media.video import probe_mp4

from conftest import RunningServer, make_settings, start_server
from helpers import wait_for_task
from loopback_doubles import FaultProxy, Reply, serve_files


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(make_settings(tmp_path_factory.mktemp("cli")))
    yield running
    running.stop()


@dataclass
class Call:
    """One `imagine …` invocation; `server`/`key` become IMAGINE_BASE_URL/IMAGINE_API_KEY
    (`base_url`, when given, instead of the server's URL)."""

    args: list[str]
    server: RunningServer | None
    key: str | None
    cwd: Path | None = None
    base_url: str | None = None


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def imagine(*calls: Call) -> list[Done]:
    """Run the calls side by side: each is a fresh interpreter, mostly start-up time."""
    running = []
    for call in calls:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGINE_")}
        if call.key is not None:
            env["IMAGINE_API_KEY"] = call.key
        if call.base_url is not None:
            env["IMAGINE_BASE_URL"] = call.base_url
        elif call.server is not None:
            env["IMAGINE_BASE_URL"] = call.server.url
        running.append(
            subprocess.Popen(
                [sys.executable, "-m", "imagine", *call.args],
                env=env,
                cwd=call.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    for process in running:
        stdout, stderr = process.communicate(timeout=90)
        done.append(Done(process.returncode, stdout, stderr))
    return done


def test_generate_waits_downloads_and_prints_the_paths(
    shared: RunningServer, tmp_path: Path
) -> None:
    key = shared.new_key().key
    [done] = imagine(
        Call(
            ["generate", "a lighthouse", "--ratio", "1:1", "--duration", "1", "--out", "videos"],
            shared,
            key,
            cwd=tmp_path,
        )
    )
    assert done.returncode == 0, done.stderr
    paths = done.stdout.splitlines()
    assert len(paths) == 1 and paths[0].startswith("videos/task_") and paths[0].endswith("_0.mp4")
    video = probe_mp4(tmp_path / paths[0])
    assert (video.width, video.height, video.codec) == (480, 480, "h264")
    assert "completed" in done.stderr and "100%" in done.stderr  # the progress display


def test_json_output_is_machine_readable_and_status_download_work(
    shared: RunningServer, tmp_path: Path
) -> None:
    key = shared.new_key().key
    waited, submitted, plain = imagine(
        Call(["generate", "as json", "--duration", "1", "--ratio", "9:16", "--json",
              "--out", str(tmp_path / "a")], shared, key),
        Call(["generate", "later", "--duration", "1", "--no-wait", "--json"], shared, key),
        Call(["generate", "plain", "--duration", "1", "--no-wait"], shared, key),
    )  # fmt: skip

    assert waited.returncode == 0, waited.stderr
    assert waited.stderr == ""  # no progress display, no decoration
    result = json.loads(waited.stdout)
    assert result["status"] == "completed" and result["consumed_credits"] == 40
    assert result["request"]["ratio"] == "9:16"
    assert probe_mp4(Path(result["files"][0])).height == 848

    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["task_id"]
    assert plain.returncode == 0 and plain.stdout.strip().startswith("task_")

    with shared.client(key) as http:  # the CLI's own waiting is proven above
        wait_for_task(http, task_id)
    as_json, shown, fetched = imagine(
        Call(["status", task_id, "--json"], shared, key),
        Call(["status", task_id], shared, key),
        Call(["download", task_id, "--out", str(tmp_path / "b")], shared, key),
    )

    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["task_id"] == task_id and status["status"] == "completed"
    assert status["response"][0].startswith(shared.url)

    assert shown.returncode == 0, shown.stderr
    assert f"task     {task_id}" in shown.stdout and "completed (100%)" in shown.stdout

    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.splitlines() == [str(tmp_path / "b" / f"{task_id}_0.mp4")]
    assert probe_mp4(tmp_path / "b" / f"{task_id}_0.mp4").codec == "h264"


@dataclass
class Case:
    name: str
    call: Call
    expected: int
    says: str


def test_each_failure_has_its_exit_code_and_one_line_on_stderr(
    shared: RunningServer, tmp_path: Path
) -> None:
    limited = start_server(make_settings(tmp_path / "limited", rate_limit_free=1))
    idle = start_server(make_settings(tmp_path / "idle", workers=0))
    try:
        limited_key = limited.new_key().key
        with limited.client(limited_key) as http:  # spend the minute's only request
            assert http.get("/v1/status", params={"task_id": "x"}).status_code == 404
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        key, broke = shared.new_key().key, shared.new_key(credits=0).key
        idle_key = idle.new_key().key
        missing = str(tmp_path / "none.png")
        with serve_files({"/fake.png": ("image/png", b"not an image")}) as host:
            cases = [
                Case("bad ratio", Call(["generate", "x", "--ratio", "5:4"], shared, key), 2,
                     "ratio"),
                Case("bad image", Call(["generate", "x", "--image", missing], shared, key), 2,
                     "none.png"),
                Case("bad key", Call(["status", "t", "--api-key", "imk_wrong"], shared, key), 3,
                     "API key"),
                Case("no key", Call(["status", "task_x"], shared, None), 3, "IMAGINE_API_KEY"),
                Case("no credits", Call(["generate", "x", "--no-wait"], shared, broke), 4,
                     "credits"),
                Case("rate limited", Call(["status", "t", "--max-retries", "0"], limited,
                     limited_key), 5, "retry in"),
                Case("task failed", Call(["generate", "x", "--duration", "1", "--image",
                     f"{host}/fake.png"], shared, key), 6, "File type not supported"),
                Case("network", Call(["status", "t", "--max-retries", "0", "--base-url", closed],
                     None, key), 7, closed),
                Case("not found", Call(["status", "task_nope"], shared, key), 8, "not found"),
                Case("timeout", Call(["generate", "x", "--duration", "1", "--timeout", "0.5"], idle,
                     idle_key), 9, "still pending"),
            ]  # fmt: skip
            outcomes = imagine(*(case.call for case in cases))
    finally:
        limited.stop()
        idle.stop()

    for case, done in zip(cases, outcomes, strict=True):
        where = f"{case.name}: {done}"
        assert done.returncode == case.expected, where
        assert done.stdout == "", where
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and errors[0].startswith("error: "), where
        assert done.stderr.rstrip("\n").endswith(errors[0]), where  # after any progress display
        assert case.says.lower() in errors[0].lower(), where


def test_cancel_tasks_and_account_print_json_or_text_with_their_exit_codes(
    tmp_path: Path,
) -> None:
    idle = start_server(make_settings(tmp_path / "idle", workers=0))  # tasks stay pending
    try:
        issued = idle.new_key(credits=1000)
        key = issued.key
        with idle.client(key) as http:
            made = [
                http.post("/v1/generate", json={"prompt": f"task {n}", "duration": 1}).json()[
                    "data"
                ]["task_id"]
                for n in range(3)
            ]
        cancelled, shown, nowhere, bad_status, stranger = imagine(
            Call(["cancel", made[0], "--json"], idle, key),
            Call(["cancel", made[1]], idle, key),
            Call(["cancel", "task_nope"], idle, key),
            Call(["tasks", "--status", "lost"], idle, key),
            Call(["account", "--api-key", "imk_wrong"], idle, key),
        )
        again, page, table, account_json, account_text = imagine(
            Call(["cancel", made[0]], idle, key),
            Call(["tasks", "--json", "--limit", "2"], idle, key),
            Call(["tasks", "--status", "cancelled"], idle, key),
            Call(["account", "--json"], idle, key),
            Call(["account"], idle, key),
        )
    finally:
        idle.stop()

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stderr == ""
    data = json.loads(cancelled.stdout)
    assert (data["task_id"], data["status"], data["consumed_credits"]) == (made[0], "cancelled", 0)
    assert data["cancel_requested"] is False and data["test"] is False

    assert shown.returncode == 0, shown.stderr
    assert f"task     {made[1]}" in shown.stdout and "cancelled" in shown.stdout

    for done, code, says in (
        (nowhere, 8, "not found"),
        (bad_status, 2, "status"),
        (stranger, 3, "API key"),
        (again, 10, "already cancelled"),
    ):
        assert done.returncode == code, done
        assert done.stdout == "", done
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done
        assert says.lower() in done.stderr.lower(), done

    assert page.returncode == 0, page.stderr
    listed = json.loads(page.stdout)
    assert [t["task_id"] for t in listed["tasks"]] == [made[2], made[1]]
    assert listed["has_more"] is True and listed["next_after"] == made[1]
    assert (
        listed["tasks"][0]["status"] == "pending" and listed["tasks"][0]["queue_position"] is None
    )

    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("task_")]
    assert [row.split()[:3] for row in rows] == [
        [made[1], "cancelled", "0"],
        [made[0], "cancelled", "0"],
    ]
    assert "status" in table.stdout and "credits" in table.stdout  # the header

    assert account_json.returncode == 0, account_json.stderr
    account = json.loads(account_json.stdout)
    assert (account["account_id"], account["plan"], account["balance"]) == (
        issued.account_id,
        "free",
        960,
    )
    assert account["usage"]["24h"]["tasks"] == {
        "pending": 1,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 2,
    }
    assert account["usage"]["30d"]["credits_spent"] == 40
    assert account["rate_limit"]["limit"] == 100

    assert account_text.returncode == 0, account_text.stderr
    assert f"account  {issued.account_id}" in account_text.stdout
    assert "balance  960 credits" in account_text.stdout
    assert "40 credits spent; tasks: 1 pending, 2 cancelled" in account_text.stdout


def test_download_refuses_a_task_id_that_would_leave_the_out_directory(
    shared: RunningServer, tmp_path: Path
) -> None:
    issued = shared.new_key()
    with shared.client(issued.key) as http:
        task_id = http.post("/v1/generate", json={"prompt": "p", "duration": 1}).json()["data"]
        data = wait_for_task(http, task_id["task_id"])
    answer: dict[str, Any] = {"code": 200, "message": "success", "data": data}
    answer["data"]["task_id"] = "../../escaped/pwned"
    forged = Reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
    proxy = FaultProxy(shared.url, lambda seen, n: forged)
    out = tmp_path / "a" / "b" / "out"
    with proxy.running() as url:
        [done] = imagine(
            Call(["download", "task_0", "--out", str(out)], None, issued.key, base_url=url)
        )
    assert done.returncode != 0
    assert "not a task id the API issues" in done.stderr and "Traceback" not in done.stderr
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
