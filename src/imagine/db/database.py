"""Engines and sessions, made per app (never at import time).

SQLite allows one writer at a time. A transaction that reads and then writes
can fail with SQLITE_BUSY when another writer committed in between, and a busy
timeout does not save it. So writes go through a second engine whose
transactions start with `BEGIN IMMEDIATE`: writers queue on the lock (up to
the busy timeout) instead of failing, while reads stay concurrent under WAL.
On PostgreSQL both are the same engine.

The hot paths bypass the ORM (see `imagine.db.prepared`):

- `read_one`/`read_all` run a small indexed read. On SQLite, on a plain
  `sqlite3` connection on the event loop: in WAL mode such a read takes
  microseconds and never waits for writers, while a hop to aiosqlite's thread
  costs far more than the query. On PostgreSQL, in one round trip on
  asyncpg's own pool.
- `transaction` runs a unit of work: on SQLite through the group committer
  (`imagine.db.group_commit`), where concurrent units share one commit; on
  PostgreSQL in a transaction of its own.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Executable, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from imagine import private_files
from imagine.db.batching import Batcher
from imagine.db.group_commit import GroupCommitter
from imagine.db.prepared import AsyncpgReads, ConnectionTx, Row, SqliteTx
from imagine.db.unavailable import CONNECT_TIMEOUT_SECONDS

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

SQLITE_BUSY_TIMEOUT_MS = 30_000
HOT_READ_BUSY_TIMEOUT_MS = 1_000  # WAL readers wait only in rare checkpoint corners


class Database:
    """The service's database: ORM sessions (`read()`, `write()`) for most work,
    and the hot paths (`read_one`/`read_all`, `transaction`) described above."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self._committer: GroupCommitter | None = None
        self._postgres_reads: AsyncpgReads | None = None
        self._hot = threading.local()
        self._hot_connections: list[sqlite3.Connection] = []
        self._batchers: dict[object, Batcher[Any, Any]] = {}
        if self.is_sqlite:
            self._path = make_url(url).database or ""
            _create_private(self._path)
            self._read_engine = _sqlite_engine(url, begin="BEGIN")
            self._write_engine = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
            self._committer = GroupCommitter(lambda: _sqlite_connect(self._path))
        else:
            # Bounded waits: during an outage a request is answered 503, not held.
            self._read_engine = create_async_engine(
                url,
                pool_pre_ping=True,
                pool_timeout=CONNECT_TIMEOUT_SECONDS,
                connect_args=(
                    {"timeout": CONNECT_TIMEOUT_SECONDS}
                    if make_url(url).get_driver_name() == "asyncpg"
                    else {}
                ),
            )
            self._write_engine = self._read_engine
            dialect = self._read_engine.dialect
            if dialect.driver == "asyncpg":
                _args, connect_args = dialect.create_connect_args(self._read_engine.url)
                self._postgres_reads = AsyncpgReads(dialect, dict(connect_args))
        self._read = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self._write = async_sessionmaker(self._write_engine, expire_on_commit=False)

    @property
    def sync_engines(self) -> tuple[Engine, ...]:
        """The SQLAlchemy engines behind the sessions (for tracing)."""
        engines = {
            id(e.sync_engine): e.sync_engine for e in (self._read_engine, self._write_engine)
        }
        return tuple(engines.values())

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for queries; nothing it does is committed."""
        async with self._read() as session:
            yield session

    async def read_one(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        """The first row of a small, indexed read (see the module doc)."""
        rows = await self.read_all(statement, params)
        return rows[0] if rows else None

    async def read_all(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        """Every row of a small, indexed read (see the module doc)."""
        if self.is_sqlite:
            return SqliteTx(self._hot_connection()).all(statement, params)
        if self._postgres_reads is not None:
            return await self._postgres_reads.fetch(statement, params)
        async with self._read_engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(statement, dict(params))).mappings()]

    async def write_one(self, statement: Executable, params: Mapping[str, Any]) -> list[Row] | None:
        """A statement that writes, as its own transaction in one round trip, on
        PostgreSQL's asyncpg pool; None elsewhere (the caller does it another way)."""
        if self._postgres_reads is None:
            return None
        return await self._postgres_reads.write(statement, params)

    async def outlived(self, backend_pid: int, within: float) -> bool:
        """Whether PostgreSQL's server process `backend_pid` is gone within
        `within` seconds, so that a `WriteInDoubt` of it can be settled by
        reading; False elsewhere."""
        if self._postgres_reads is None:
            return False
        return await self._postgres_reads.outlived(backend_pid, within)

    async def batched(
        self,
        run: Callable[[Database, list[Item]], Awaitable[list[Result]]],
        item: Item,
        *,
        in_flight: int = 4,
    ) -> Result:
        """`run(db, items)`'s answer for `item`, sharing one call of `run` with the
        calls that arrive with it (`imagine.db.batching`) on PostgreSQL. On SQLite
        `item` goes alone: a read is microseconds on the event loop and writes
        already share commits, so batching would only add a hop."""
        if self.is_sqlite:
            return (await run(self, [item]))[0]
        batcher = self._batchers.get(run)
        if batcher is None:
            batcher = self._batchers[run] = Batcher(
                functools.partial(run, self), in_flight=in_flight
            )
        return cast(Result, await batcher(item))

    async def transaction(self, work: Callable[..., T], *args: Any) -> T:
        """`work(tx, *args)` in one transaction, returning once it is committed.

        `work` is plain synchronous code over `Tx`; if it raises, nothing it
        did is kept. On SQLite concurrent units share a commit (group commit).
        """
        if self._committer is not None:
            return await self._committer.run(work, *args)
        async with self._write_engine.begin() as conn:
            return await conn.run_sync(_on_connection, work, *args)

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
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        if self._committer is not None:
            await self._committer.close()
        if self._postgres_reads is not None:
            await self._postgres_reads.close()
        for connection in self._hot_connections:
            connection.close()
        self._hot_connections.clear()
        self._hot = threading.local()
        await self._read_engine.dispose()
        if self._write_engine is not self._read_engine:
            await self._write_engine.dispose()

    def _hot_connection(self) -> sqlite3.Connection:
        """This thread's read-only connection (an event loop lives in one thread)."""
        connection: sqlite3.Connection | None = getattr(self._hot, "connection", None)
        if connection is None:
            connection = _sqlite_connect(self._path, busy_timeout_ms=HOT_READ_BUSY_TIMEOUT_MS)
            connection.execute("PRAGMA query_only=ON")
            self._hot.connection = connection
            self._hot_connections.append(connection)
        return connection


async def in_session(session: AsyncSession, work: Callable[..., T], *args: Any) -> T:
    """`work(tx, *args)` inside an ORM session's transaction (for units shared
    between the hot paths and ORM code, such as the ledger's)."""
    return await session.run_sync(_on_session, work, *args)


def _on_connection(connection: Connection, work: Callable[..., T], *args: Any) -> T:
    return work(ConnectionTx(connection), *args)


def _on_session(session: Session, work: Callable[..., T], *args: Any) -> T:
    return work(ConnectionTx(session.connection()), *args)


def _sqlite_connect(path: str, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A plain connection with the same settings as the SQLAlchemy ones; autocommit
    mode, so transactions are exactly the BEGINs its user issues."""
    connection = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    _sqlite_pragmas(connection, busy_timeout_ms)
    return connection


def _create_private(path: str) -> None:
    """Create the database file 0600 before SQLite does: SQLite gives its WAL and
    shared-memory files the database file's mode, so all three stay private."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(private_files.create_private(Path(path)))


def _sqlite_pragmas(connection: Any, busy_timeout_ms: int) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_engine(url: str, *, begin: str) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, open transactions.
        dbapi_connection.isolation_level = None
        _sqlite_pragmas(dbapi_connection, SQLITE_BUSY_TIMEOUT_MS)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine
