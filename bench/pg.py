"""A throwaway PostgreSQL database for `--postgres` runs (the machine's server)."""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg

ADMIN = os.environ.get("IMAGINE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class TemporaryDatabase:
    def __init__(self) -> None:
        self.name = f"imagine_bench_{secrets.token_hex(4)}"
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        base = ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        self.url = f"{base}/{self.name}"

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(ADMIN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
