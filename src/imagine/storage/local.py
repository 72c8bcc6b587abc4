"""Files in a directory, served by the API itself under signed, expiring URLs.

A URL is `/files/<key>?expires=<epoch>&signature=<hmac>`; the HMAC covers key
and expiry, so URLs cannot be guessed or extended. Expiry is rounded up to
the hour, so a client polling status keeps getting the same (cacheable) URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from imagine.storage.base import INPUTS_PREFIX

_ROUND = 3600


class LocalStorage:
    def __init__(self, root: Path, secret: bytes, ttl_seconds: int) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self._ttl = ttl_seconds

    def save(self, task_id: str, source: Path) -> str:
        key = f"{task_id}/{secrets.token_urlsafe(12)}{source.suffix}"
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        with partial.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        return key

    def put(self, name: str, data: bytes) -> str:
        target = self.path_for(name)
        if target is None:
            raise ValueError(f"storage name {name!r} escapes the storage directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        return name

    def read(self, key: str) -> bytes:
        path = self.path_for(key)
        if path is None:
            raise FileNotFoundError(key)
        return path.read_bytes()

    def entries(self, prefix: str) -> list[tuple[str, float]]:
        folder, _, _ = prefix.rpartition("/")
        base = self.path_for(folder) if folder else self.root
        if base is None or not base.is_dir():
            return []
        found = []
        for path in base.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and path.is_file():
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    found.append((key, path.stat().st_mtime))
        return found

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        if path is not None:
            path.unlink(missing_ok=True)
            if path.parent != self.root:
                with contextlib.suppress(OSError):  # not empty: other files of the task
                    path.parent.rmdir()

    def path_for(self, key: str) -> Path | None:
        """The file behind a key, refusing anything that escapes the root."""
        path = (self.root / key).resolve()
        return path if path.is_relative_to(self.root) and path != self.root else None

    def url(self, key: str, base_url: str) -> str:
        expires = (int(time.time()) + self._ttl + _ROUND - 1) // _ROUND * _ROUND
        return (
            f"{base_url.rstrip('/')}/files/{quote(key)}"
            f"?expires={expires}&signature={self._sign(key, expires)}"
        )

    def verify(self, key: str, expires: int, signature: str) -> Path | None:
        """The file for a signed URL, or None if the signature, expiry or file is bad."""
        if expires < time.time() or key.startswith(INPUTS_PREFIX):
            return None
        if not hmac.compare_digest(self._sign(key, expires), signature):
            return None
        path = self.path_for(key)
        return path if path is not None and path.is_file() else None

    def _sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def load_or_create_secret(data_dir: Path, configured: str | None) -> bytes:
    """The signing secret: configured, or generated once and kept in the data dir."""
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written aside, then linked into place: a concurrent starter sees
        # either no file or the whole secret, never a partial one.
        draft = data_dir / f".secret.{secrets.token_hex(4)}"
        draft.write_text(secrets.token_hex(32))
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes().strip()
