"""Where videos, and input images while their task runs, are kept: a local directory or S3."""

from __future__ import annotations

from imagine.server_secret import server_secret
from imagine.settings import Settings
from imagine.storage.base import Storage
from imagine.storage.local import LocalStorage


def create_storage(settings: Settings) -> Storage:
    """The storage backend the settings ask for (local by default)."""
    if settings.storage_url:
        from imagine.storage.s3 import S3Storage

        return S3Storage(
            settings.storage_url,
            ttl_seconds=settings.file_url_ttl_seconds,
            public_base_url=settings.storage_public_url,
            timeout_seconds=settings.storage_timeout_seconds,
        )
    return LocalStorage(settings.files_dir, server_secret(settings), settings.file_url_ttl_seconds)


__all__ = ["LocalStorage", "Storage", "create_storage"]
