"""Engines and sessions, made per app (never at import time).

SQLite allows one writer at a time. A transaction that reads and then writes
can fail with SQLITE_BUSY when another writer committed in between, and a busy
timeout does not save it. So writes go through a second engine whose
transactions start with `BEGIN IMMEDIATE`: writers queue on the lock (up to
the busy timeout) instead of failing, while reads stay concurrent under WAL.
On PostgreSQL both are the same engine.

The hottest reads (authenticating a key, reading a task for `/v1/status`) go
through `read_one`. On SQLite it runs a Core statement on a plain synchronous
connection, on the event loop: an indexed point read in WAL mode takes tens of
microseconds and never waits for writers, while a hop to aiosqlite's thread
costs far more than the query itself. On PostgreSQL it is an ordinary async read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, Executable, RowMapping, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
HOT_READ_BUSY_TIMEOUT_MS = 1_000  # WAL readers wait only in rare checkpoint corners


class Database:
    """The two session factories the service uses: `read()` and `write()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self._hot_engine: Engine | None = None
        if self.is_sqlite:
            self._read_engine = _sqlite_engine(url, begin="BEGIN")
            self._write_engine = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
            self._hot_engine = create_engine(
                make_url(url).set(drivername="sqlite"),
                connect_args={"timeout": HOT_READ_BUSY_TIMEOUT_MS / 1000},
            )
            event.listen(self._hot_engine, "connect", _hot_sqlite_pragmas)
        else:
            self._read_engine = create_async_engine(url, pool_pre_ping=True)
            self._write_engine = self._read_engine
        self._read = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self._write = async_sessionmaker(self._write_engine, expire_on_commit=False)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries; nothing it does is committed."""
        async with self._read() as session:
            yield session

    async def read_one(
        self, statement: Executable, params: dict[str, Any] | None = None
    ) -> RowMapping | None:
        """The first row of a small, indexed read, as a mapping (see the module doc)."""
        if self._hot_engine is not None:
            with self._hot_engine.connect() as conn:
                return conn.execute(statement, params).mappings().first()
        async with self._read_engine.connect() as conn:
            return (await conn.execute(statement, params)).mappings().first()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def migration_connection(self) -> AsyncIterator[AsyncConnection]:
        """One connection in one transaction, for schema work (see `imagine.db.schema`)."""
        async with self._write_engine.begin() as connection:
            yield connection

    async def dispose(self) -> None:
        if self._hot_engine is not None:
            self._hot_engine.dispose()
        await self._read_engine.dispose()
        if self._write_engine is not self._read_engine:
            await self._write_engine.dispose()


def _hot_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={HOT_READ_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _sqlite_engine(url: str, *, begin: str) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, open transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine
