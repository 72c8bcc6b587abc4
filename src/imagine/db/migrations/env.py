"""Alembic environment: runs on the connection `imagine.db.schema` hands it."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context

from imagine.db.models import Base, UTCDateTime


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Write our column types as plain SQLAlchemy ones, so migrations import nothing of ours."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
