"""The data directory, and every file the service keeps, is private to its user.

It holds the SQLite database (accounts, ledger, webhook secrets), the server
secret, stored videos and work files. What the service creates there is
private from the moment it exists, never tightened afterwards: directories
0700, files 0600. The server's commands also set the process umask to 077,
so files written by libraries (SQLite's WAL, PyAV, temporary files) follow.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("imagine.files")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_by_default() -> None:
    """From now on, everything this process creates is for its user only."""
    os.umask(PRIVATE_UMASK)


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory 0700, or close an existing one that other users
    could enter (a warning says so: what it held may have been read)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path, DIR_MODE)
    return path


def private_dir(path: Path) -> Path:
    """A directory inside the data dir, 0700 when this creates it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def tighten(path: Path, mode: int) -> None:
    """Take away what `mode` does not allow, with a warning if anything was."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(current & mode)
        log.warning(
            "%s was open to other users (mode %03o); it is now %03o", path, current, current & mode
        )


def create_private(path: Path) -> int:
    """A new file, 0600 from its creation (`O_EXCL`: never an existing file, nor a
    link an attacker planted). Raises `FileExistsError`; returns a writable fd."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
