"""Public identifiers and the clock, shared by every part of the service."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_id(kind: str) -> str:
    """Identifiers such as `task_…`, `acct_…`, `key_…`: random, so unguessable."""
    return f"{kind}_{secrets.token_hex(12)}"


def utcnow() -> datetime:
    return datetime.now(UTC)
