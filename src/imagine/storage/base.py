"""Where finished videos live. Backends implement `Storage`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """Keeps output files under opaque keys and hands out URLs for them."""

    def save(self, task_id: str, source: Path) -> str:
        """Move `source` into storage; returns its key."""
        ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str, base_url: str) -> str:
        """A URL a browser can fetch (and seek in) without our bearer key."""
        ...
