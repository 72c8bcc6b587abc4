"""The data dir is private to the service's user: 0700 directories and 0600
files from the moment they exist, whatever umask the process was started with."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from imagine.server_secret import load_or_create_secret

from helpers import wait_for_task
from processes import ServeProcess, cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    """Start processes (or create files) under `value`, as a careless shell would."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_real_server_run_leaves_nothing_readable_by_other_users(
    tmp_path: Path, processes: list[ServeProcess]
) -> None:
    data_dir = tmp_path / "data"
    with umask(0o022):
        serving = ServeProcess(data_dir)
    processes.append(serving)
    key = re.search(r"imk_\w+", serving.output())
    assert key is not None, serving.output()
    headers = {"Authorization": f"Bearer {key.group()}"}
    with httpx.Client(base_url=serving.url, headers=headers) as client:
        submitted = client.post("/v1/generate", json={"prompt": "p", "duration": 1})
        assert wait_for_task(client, submitted.json()["data"]["task_id"])["status"] == "completed"
        # While the server runs, the WAL and shared-memory files exist too.
        database = [data_dir / name for name in ("imagine.db", "imagine.db-wal", "imagine.db-shm")]
        assert {path.name: mode(path) for path in database} == {
            path.name: 0o600 for path in database
        }
    videos = list((data_dir / "files").rglob("*.mp4"))
    assert len(videos) == 1
    directories = [data_dir, data_dir / "work", data_dir / "files", videos[0].parent]
    assert {str(d): mode(d) for d in directories} == {str(d): 0o700 for d in directories}
    files = [data_dir / "secret.key", videos[0]]
    assert {str(f): mode(f) for f in files} == {str(f): 0o600 for f in files}
    # Nothing anywhere in the data dir is open to the group or others.
    loose = [str(p) for p in data_dir.rglob("*") if mode(p) & 0o077]
    assert loose == []


def test_an_existing_open_data_dir_is_closed_at_start_with_a_warning(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "secret.key").write_text("a" * 64)
    (data_dir / "secret.key").chmod(0o644)
    done = cli("webhooks", "secret", "acct_none", "--data-dir", str(data_dir))
    assert done.returncode == 1  # no such account; the start-up work happened all the same
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "secret.key") == 0o600
    assert "was open to other users (mode 755)" in done.stderr


class FileEvents:
    """What the interpreter reports (audit events) about files under one directory."""

    def __init__(self, under: Path) -> None:
        self.under = str(under)
        self.opened: list[tuple[str, int]] = []
        self.chmodded: list[str] = []
        self.active = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open" and str(args[0]).startswith(self.under):
            self.opened.append((str(args[0]), int(args[2] or 0)))
        elif event == "os.chmod" and str(args[0]).startswith(self.under):
            self.chmodded.append(str(args[0]))


def test_the_secret_file_is_created_private_never_made_private_afterwards(
    tmp_path: Path,
) -> None:
    """Created with O_EXCL and mode 0600 even under umask 000, so no other user
    can open it between its creation and a chmod; and never twice the same."""
    events = FileEvents(tmp_path)
    sys.addaudithook(events)  # hooks stay for the process: this one only listens here
    events.active = True
    try:
        with umask(0o000):
            secret = load_or_create_secret(tmp_path / "data", None)
    finally:
        events.active = False
    assert len(secret) == 64
    assert mode(tmp_path / "data" / "secret.key") == 0o600
    assert mode(tmp_path / "data") == 0o700
    writes = [flags for _, flags in events.opened if flags & (os.O_WRONLY | os.O_RDWR)]
    assert writes and all(flags & os.O_CREAT and flags & os.O_EXCL for flags in writes)
    assert events.chmodded == []
    assert load_or_create_secret(tmp_path / "data", None) == secret
