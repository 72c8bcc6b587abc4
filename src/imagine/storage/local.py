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
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from imagine import private_files
from imagine.observability.metrics import storage_op
from imagine.storage.base import INPUTS_PREFIX

_ROUND = 3600


class LocalStorage:
    def __init__(self, root: Path, secret: bytes, ttl_seconds: int) -> None:
        self.root = private_files.private_dir(root.resolve())
        self._secret = secret
        self._ttl = ttl_seconds

    @storage_op("local", "save")
    def save(self, task_id: str, source: Path) -> str:
        key = f"{task_id}/{secrets.token_urlsafe(12)}{source.suffix}"
        with source.open("rb") as reader:
            self._write(self.root / key, lambda writer: shutil.copyfileobj(reader, writer))
        return key

    @storage_op("local", "put")
    def put(self, name: str, data: bytes) -> str:
        target = self.path_for(name)
        if target is None:
            raise ValueError(f"storage name {name!r} escapes the storage directory")
        self._write(target, lambda writer: writer.write(data))
        return name

    @staticmethod
    def _write(target: Path, fill: Callable[[BinaryIO], object]) -> None:
        """A private file that appears whole or not at all: written beside its
        name, synced, then renamed (a reader never sees half a file); a write
        that fails (ENOSPC) removes what it wrote."""
        private_files.private_dir(target.parent)
        partial = target.with_name(target.name + ".partial")
        try:
            with os.fdopen(private_files.create_private(partial), "wb") as writer:
                fill(writer)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(partial, target)
        except BaseException:  # a full disk: give its space back, leave no trace
            partial.unlink(missing_ok=True)
            raise

    @storage_op("local", "read")
    def read(self, key: str) -> bytes:
        path = self.path_for(key)
        if path is None:
            raise FileNotFoundError(key)
        return path.read_bytes()

    @storage_op("local", "entries")
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

    @storage_op("local", "delete")
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

    @property
    def media_origin(self) -> str | None:
        return None  # served by this server's /files/

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
        # A signature is hex; compare_digest raises on a str with other characters.
        if not signature.isascii() or not hmac.compare_digest(self._sign(key, expires), signature):
            return None
        path = self.path_for(key)
        return path if path is not None and path.is_file() else None

    def _sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
