"""Credit amounts beyond what a balance can hold are refused by the `imagine`
command with a clear message, never a traceback, and change nothing: run as an
operator runs it, a subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from imagine.credits import MAX_BALANCE

from processes import cli

TOO_BIG = "99999999999999999999"  # > 2**64


def run(data_dir: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"IMAGINE_DATABASE_URL": database_url} if database_url else {}
    return cli(*args, "--data-dir", str(data_dir), env=env)


def accounts(data_dir: Path, database_url: str) -> list[dict[str, Any]]:
    listed = run(data_dir, database_url, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def assert_refused(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())  # rich wraps long lines
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in message, message


def test_credit_amounts_beyond_64_bits_are_refused_and_change_nothing(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    assert_refused(
        run(data_dir, database_url, "keys", "create", "--credits", TOO_BIG), 2, "--credits"
    )
    assert accounts(data_dir, database_url) == []

    created = run(data_dir, database_url, "keys", "create", "--credits", "5", "--json")
    account_id = json.loads(created.stdout)["account_id"]
    granted = run(data_dir, database_url, "credits", "grant", account_id, TOO_BIG)
    assert_refused(granted, 2, "amount")
    assert [a["balance"] for a in accounts(data_dir, database_url)] == [5]


def test_grants_never_take_a_balance_beyond_the_column(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    created = run(data_dir, database_url, "keys", "create", "--credits", "5", "--json")
    account_id = json.loads(created.stdout)["account_id"]
    to_the_top = str(MAX_BALANCE - 5)
    filled = run(data_dir, database_url, "credits", "grant", account_id, to_the_top)
    assert filled.returncode == 0, filled.stderr
    assert f"balance {MAX_BALANCE}" in " ".join(filled.stdout.split())
    for amount in ("1", str(MAX_BALANCE)):
        assert_refused(
            run(data_dir, database_url, "credits", "grant", account_id, amount),
            1,
            f"beyond {MAX_BALANCE}",
            "nothing was granted",
        )
    assert [a["balance"] for a in accounts(data_dir, database_url)] == [MAX_BALANCE]
