"""Where finished videos and submitted input images live. Backends implement `Storage`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

INPUTS_PREFIX = "inputs/"
"""Keys under this name are tasks' input images: kept only while their task runs,
never signed, served or listed as an output."""


class Storage(Protocol):
    """Keeps files under opaque keys and hands out URLs for the outputs among them."""

    def save(self, task_id: str, source: Path) -> str:
        """Move an output file into storage; returns its key."""
        ...

    def put(self, name: str, data: bytes) -> str:
        """Keep `data` under `name` (durably, whole or not at all); returns its key."""
        ...

    def read(self, key: str) -> bytes:
        """The bytes under `key`; FileNotFoundError if there are none."""
        ...

    def entries(self, prefix: str) -> list[tuple[str, float]]:
        """Keys of the files whose name starts with `prefix`, each with the time
        (epoch seconds) it was written."""
        ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str, base_url: str) -> str:
        """A URL a browser can fetch (and seek in) without our bearer key."""
        ...

    @property
    def media_origin(self) -> str | None:
        """The origin of those URLs when it is not this server's (a page's
        Content-Security-Policy must allow it); None for our own `/files/`."""
        ...
