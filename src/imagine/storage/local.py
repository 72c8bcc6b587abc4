"""Files in a directory, served by the API itself under signed, expiring URLs.

A URL is `/files/<key>?expires=<epoch>&signature=<hmac>`; the HMAC covers key
and expiry, so URLs cannot be guessed or extended. Expiry is rounded up to
the hour, so a client polling status keeps getting the same (cacheable) URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import quote

from imagine import private_files

_ROUND = 3600


class LocalStorage:
    def __init__(self, root: Path, secret: bytes, ttl_seconds: int) -> None:
        self.root = private_files.private_dir(root.resolve())
        self._secret = secret
        self._ttl = ttl_seconds

    def save(self, task_id: str, source: Path) -> str:
        key = f"{task_id}/{secrets.token_urlsafe(12)}{source.suffix}"
        target = self.root / key
        private_files.private_dir(target.parent)
        partial = target.with_name(target.name + ".partial")
        with (
            source.open("rb") as reader,
            os.fdopen(private_files.create_private(partial), "wb") as writer,
        ):
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(partial, target)
        return key

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        if path is not None:
            path.unlink(missing_ok=True)

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
        if expires < time.time():
            return None
        # A signature is hex; compare_digest raises on a str with other characters.
        if not signature.isascii() or not hmac.compare_digest(self._sign(key, expires), signature):
            return None
        path = self.path_for(key)
        return path if path is not None and path.is_file() else None

    def _sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
