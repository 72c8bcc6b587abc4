"""Core statements run straight on the database driver, and one interface
(`Tx`) over that and an SQLAlchemy connection, so a unit of work is written once.

SQLAlchemy's execution layer costs several times the database work for the
tiny point reads and inserts on the hot paths: about 30 µs against 7 µs for a
primary-key read on SQLite; on PostgreSQL a pre-ping, a BEGIN and a ROLLBACK
around every read, four round trips instead of one. `Prepared` keeps
SQLAlchemy for what it is good at — the SQL comes from the models, and values
go through the column types' own bind and result processors for the dialect —
and skips the rest: the statement is compiled once and run on the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, cast

import asyncpg
from sqlalchemy import Boolean, Connection, Dialect, Executable, Integer, bindparam, exc, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from imagine.db.unavailable import CONNECT_TIMEOUT_SECONDS, CONNECTION_LOST

Row = dict[str, Any]
Processor = Callable[[Any], Any] | None

_SQLITE = sqlite_dialect.dialect()


class Tx(Protocol):
    """One transaction's statements, whatever runs them."""

    def first(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        """The first row the statement returns (a SELECT or a DML with RETURNING)."""
        ...

    def run(self, statement: Executable, params: Mapping[str, Any]) -> int:
        """Execute; returns the number of rows a DML statement changed."""
        ...


class Prepared:
    """A Core statement compiled once for a dialect with positional parameters
    (SQLite's `?`, asyncpg's `$1`)."""

    def __init__(self, statement: Executable, dialect: Dialect = _SQLITE) -> None:
        compiled = cast(ClauseElement, statement).compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        # Values fixed in the statement (literals such as a status); others are None
        # unless given, like a column left out of an INSERT.
        self._defaults = {name: bind.value for name, bind in compiled.binds.items()}
        self._binds: list[tuple[str, Processor]] = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or ()
        ]
        columns = list(getattr(statement, "exported_columns", ()))
        self._keys = [column.key for column in columns]
        self._converted = [
            (column.key, process)
            for column in columns
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
        ]

    def parameters(self, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, process in self._binds:
            value = params[name] if name in params else self._defaults.get(name)
            values.append(value if process is None or value is None else process(value))
        return values

    def row(self, raw: tuple[Any, ...]) -> Row:
        row = dict(zip(self._keys, raw, strict=True))
        for key, process in self._converted:
            value = row[key]
            if value is not None:
                row[key] = process(value)
        return row


_PREPARED: dict[tuple[Executable, str], Prepared] = {}


def prepared(statement: Executable, dialect: Dialect = _SQLITE) -> Prepared:
    """The statement's compiled form, built on first use (statements are module constants)."""
    key = (statement, dialect.name)
    found = _PREPARED.get(key)
    if found is None:
        found = _PREPARED[key] = Prepared(statement, dialect)
    return found


class SqliteTx:
    """`Tx` on a plain sqlite3 connection; driver errors come out as SQLAlchemy's."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def first(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        compiled = prepared(statement)
        raw = self._execute(compiled, params).fetchone()
        return None if raw is None else compiled.row(raw)

    def all(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        compiled = prepared(statement)
        return [compiled.row(raw) for raw in self._execute(compiled, params)]

    def run(self, statement: Executable, params: Mapping[str, Any]) -> int:
        return self._execute(prepared(statement), params).rowcount

    def _execute(self, compiled: Prepared, params: Mapping[str, Any]) -> sqlite3.Cursor:
        values = compiled.parameters(params)
        try:
            return self.connection.execute(compiled.sql, values)
        except sqlite3.IntegrityError as error:
            raise exc.IntegrityError(compiled.sql, values, error) from error
        except sqlite3.OperationalError as error:
            raise exc.OperationalError(compiled.sql, values, error) from error


class ConnectionTx:
    """`Tx` on an SQLAlchemy connection (PostgreSQL, or inside an ORM session)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def first(self, statement: Executable, params: Mapping[str, Any]) -> Row | None:
        row = self.connection.execute(statement, dict(params)).mappings().first()
        return None if row is None else dict(row)

    def run(self, statement: Executable, params: Mapping[str, Any]) -> int:
        return int(getattr(self.connection.execute(statement, dict(params)), "rowcount", 0))


class WriteInDoubt(Exception):
    """A write's connection was lost after its statement was sent: the
    statement may or may not have committed. `backend_pid` is the server
    process that ran it (see `AsyncpgReads.outlived`)."""

    def __init__(self, backend_pid: int) -> None:
        super().__init__(f"connection lost during a write on server process {backend_pid}")
        self.backend_pid = backend_pid


# Whether a server process is still there; asked again at this pace while the
# database is out of reach.
_BACKEND_ALIVE = (
    text("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid) AS alive")
    .bindparams(bindparam("pid", type_=Integer))
    .columns(alive=Boolean)
)
IN_DOUBT_POLL_SECONDS = 0.2
_OUT_OF_REACH: tuple[type[BaseException], ...] = (*CONNECTION_LOST, TimeoutError)


@contextlib.asynccontextmanager
async def _pooled(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of `pool`, given back whatever happens. Giving it back runs
    a reset query; if the connection breaks then, asyncpg closes it and raises,
    but the statement's answer is already in hand and must not be lost with it
    (for a write, a commit answered 503)."""
    connection = await pool.acquire()
    try:
        yield connection
    finally:
        with contextlib.suppress(*CONNECTION_LOST):
            await pool.release(connection)


class AsyncpgReads:
    """Small reads on PostgreSQL in one round trip each: asyncpg's own pool in
    autocommit (no BEGIN/ROLLBACK around a read, no ping before it), with
    SQLAlchemy's JSON codec. When a read finds its connection lost (a database
    restart), every pooled connection is replaced and the read tried once more."""

    def __init__(self, dialect: Dialect, connect_args: dict[str, Any]) -> None:
        self._dialect = dialect
        self._connect_args = connect_args
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Future[asyncpg.Pool] | None = None

    async def fetch(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        compiled = prepared(statement, self._dialect)
        values = compiled.parameters(params)
        pool = self._pool or await self._open()
        for attempt in (1, 2):
            try:
                async with _pooled(pool) as connection:
                    records = await connection.fetch(compiled.sql, *values)
            except CONNECTION_LOST:
                if attempt == 2:
                    raise
                # What lost one connection (a restart) has likely lost the others.
                await pool.expire_connections()
                continue
            return [compiled.row(tuple(record)) for record in records]
        raise AssertionError("unreachable")

    async def write(self, statement: Executable, params: Mapping[str, Any]) -> list[Row]:
        """One statement that writes, alone in its transaction, in one round
        trip. Never repeated: a connection lost once the statement was sent
        may have lost only the answer to its commit, so the caller gets
        `WriteInDoubt` (and the pool is renewed)."""
        compiled = prepared(statement, self._dialect)
        pool = self._pool or await self._open()
        async with _pooled(pool) as connection:
            backend_pid = connection.get_server_pid()
            try:
                records = await connection.fetch(compiled.sql, *compiled.parameters(params))
            except CONNECTION_LOST as error:
                await pool.expire_connections()
                raise WriteInDoubt(backend_pid) from error
        return [compiled.row(tuple(record)) for record in records]

    async def outlived(self, backend_pid: int, within: float) -> bool:
        """Whether the server process `backend_pid` is seen gone within
        `within` seconds (asking again while the database is out of reach).
        Once it is gone, whatever transaction it ran has ended: a read that
        starts afterwards sees it committed, or sees none of it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(*_OUT_OF_REACH):  # still away: ask again
                asked = self.fetch(_BACKEND_ALIVE, {"pid": backend_pid})
                if not (await asyncio.wait_for(asked, remaining))[0]["alive"]:
                    return True
            await asyncio.sleep(min(IN_DOUBT_POLL_SECONDS, max(0.0, deadline - loop.time())))
        return False

    async def _open(self) -> asyncpg.Pool:
        """The pool, created once however many reads arrive before it exists."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(
                asyncpg.create_pool(
                    min_size=1,
                    max_size=10,
                    init=_json_codec,
                    **{"timeout": CONNECT_TIMEOUT_SECONDS, **self._connect_args},
                )
            )
        opening = self._opening
        try:
            self._pool = await asyncio.shield(opening)
        except Exception:
            if self._opening is opening:
                self._opening = None  # the next read tries again
            raise
        return self._pool

    async def close(self) -> None:
        opening, self._opening, self._pool = self._opening, None, None
        if opening is not None:
            with contextlib.suppress(Exception):
                await (await opening).close()


async def _json_codec(connection: asyncpg.Connection) -> None:
    """JSON columns decoded as SQLAlchemy's asyncpg dialect does it."""
    await connection.set_type_codec(
        "json",
        encoder=str.encode,
        decoder=lambda raw: json.loads(raw.decode()),
        schema="pg_catalog",
        format="binary",
    )
