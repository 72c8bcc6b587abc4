"""Throwaway PostgreSQL databases for tests: one per test, cloned from a migrated template."""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
from sqlalchemy.engine import make_url

from imagine.db import schema
from imagine.db.database import Database

ADMIN_URL = os.environ.get(
    "IMAGINE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TEMPLATE = f"imagine_template_{os.getpid()}"


def _dsn(database: str) -> str:
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


def _sqlalchemy_url(database: str) -> str:
    return make_url(ADMIN_URL).set(database=database).render_as_string(hide_password=False)


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(_dsn(make_url(ADMIN_URL).database or "postgres"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _create_template() -> None:
    await _admin(
        f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)', f'CREATE DATABASE "{TEMPLATE}"'
    )
    db = Database(_sqlalchemy_url(TEMPLATE))
    try:
        await schema.upgrade(db)
    finally:
        await db.dispose()


class PostgresDatabases:
    """Creates migrated databases quickly (`CREATE DATABASE … TEMPLATE`) and drops them."""

    def __init__(self) -> None:
        self._template_ready = False
        self._created: list[str] = []

    def create(self, *, migrated: bool = True) -> str:
        """A new database: migrated (from the template), or empty."""
        name = f"imagine_test_{secrets.token_hex(6)}"
        if not migrated:
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            self._created.append(name)
            return _sqlalchemy_url(name)
        if not self._template_ready:
            asyncio.run(_create_template())
            self._template_ready = True
        asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"'))
        self._created.append(name)
        return _sqlalchemy_url(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._created:
            self._created.remove(name)

    def close(self) -> None:
        statements = [f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in self._created]
        if self._template_ready:
            statements.append(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        if statements:
            asyncio.run(_admin(*statements))
