"""A schema fuzzer (schemathesis) drives every documented operation with
generated input: the server must never answer 500, whatever it is sent. Its
key is an admin key, so the admin routes are driven past their 403 too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagine.accounts import service as accounts
from imagine.db.database import Database

from conftest import RunningServer
from helpers import run_db


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fuzzing_the_openapi_schema_finds_no_server_errors(
    server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(workers=0, rate_limit_enterprise=1_000_000)

    async def admin_key(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(
                session, plan="enterprise", credits=10**9, is_admin=True
            )

    issued = run_db(server.settings, admin_key)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {issued.key}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout, result.stdout[-4000:]
