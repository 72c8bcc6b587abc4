"""The server secret, and the keys derived from it.

One value per deployment: `IMAGINE_SECRET_KEY`, or else a random one created
once in `DATA_DIR/secret.key`. It signs local file URLs and, through a
derived key, encrypts webhook signing secrets at rest. Every process that
shares a database but not a data dir (the scaled-out mode: API processes,
workers, wherever `imagine webhooks secret` runs) must be given the same
`IMAGINE_SECRET_KEY`, or one cannot read what another wrote.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imagine import private_files
from imagine.settings import Settings

SECRET_FILE = "secret.key"


def server_secret(settings: Settings) -> bytes:
    return load_or_create_secret(settings.data_dir, settings.secret_key)


def load_or_create_secret(directory: Path, configured: str | None) -> bytes:
    """The configured secret, or the one kept in the data dir (created if missing)."""
    if configured:
        return configured.encode()
    path = directory / SECRET_FILE
    private_files.prepare_data_dir(directory)
    if not path.exists():
        # Written aside, 0600 from the start, then linked into place: a
        # concurrent starter sees either no file or the whole secret.
        draft = directory / f".secret.{secrets.token_hex(4)}"
        fd = private_files.create_private(draft)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    private_files.tighten(path, private_files.FILE_MODE)  # one written before files were private
    return path.read_bytes().strip()


def derived_key(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one purpose (HKDF-SHA256): keys for different uses are
    independent, and none reveals the server secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret
    )
