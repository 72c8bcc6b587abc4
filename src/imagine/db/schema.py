"""Schema versions (Alembic): upgrade, and refuse to run on an old schema.

Migrations live in `imagine/db/migrations` and run on both SQLite and
PostgreSQL. `imagine db upgrade` applies them; a server whose database is
behind the code stops with a message saying so, except the embedded SQLite
default, which upgrades itself (one process owns that file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from imagine.db.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaOutOfDate(Exception):
    """The database is not at the schema this code needs."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    def read(connection: Any) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.migration_connection() as connection:
        return await connection.run_sync(read)


async def upgrade(db: Database, revision: str = "head") -> None:
    def run(connection: Any) -> None:
        config = _config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with db.migration_connection() as connection:
        await connection.run_sync(run)


async def ensure_current(db: Database, *, auto_upgrade: bool) -> None:
    """Upgrade (if allowed) or raise `SchemaOutOfDate` with what to run."""
    current, head = await current_revision(db), head_revision()
    if current == head:
        return
    if auto_upgrade:
        await upgrade(db)
        return
    raise SchemaOutOfDate(
        f"the database schema is at revision {current or 'none (empty database)'}, "
        f"this version of Imagine needs {head}: run `imagine db upgrade` first"
    )
