"""Public identifiers and the clock, shared by every part of the service."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_RANDOM_HEX = 24


def new_id(kind: str) -> str:
    """Identifiers such as `task_…`, `acct_…`, `key_…`: random, so unguessable."""
    return f"{kind}_{secrets.token_hex(_RANDOM_HEX // 2)}"


def has_id_shape(kind: str, value: str) -> bool:
    """True when `value` could be an id `new_id(kind)` gave. Anything else names
    nothing and is answered without a query: PostgreSQL refuses a NUL byte or a
    lone surrogate with an error where it would otherwise find no row."""
    prefix = len(kind) + 1
    return (
        len(value) == prefix + _RANDOM_HEX
        and value.startswith(kind)
        and value[prefix - 1] == "_"
        and value.isascii()
        and value[prefix:].isalnum()
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
