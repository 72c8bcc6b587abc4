"""Group commit for SQLite: many small transactions, one fsync.

SQLite has one writer, and with `synchronous=FULL` every commit waits for the
disk. Taken one at a time, concurrent submits queue on the write lock and each
pays its own fsync. Here the units of work that arrive while a commit is in
progress are run together in the next transaction, each inside its own
savepoint, and committed once. A unit that raises rolls back only its
savepoint and gets its exception; the others are unaffected. Nobody is
answered before the commit has returned, so durability is exactly that of a
transaction per unit.

The units run on the event loop: each is a few statements of microseconds
on a connection that already holds the write lock, and running them in a
thread costs more in handing the GIL back and forth than the work itself.
What can take long happens in a thread: the COMMIT (the fsync, and now and
then a WAL checkpoint), and BEGIN IMMEDIATE when another process holds the
write lock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from imagine.db.prepared import SqliteTx

log = logging.getLogger("imagine.db")

T = TypeVar("T")
Work = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]

# Units per transaction at most: bounds how long one batch holds the event loop.
MAX_BATCH = 128
BUSY_TIMEOUT_MS = 30_000


class GroupCommitter:
    """Runs `fn(tx, *args)` units on one connection, in as few commits as load allows."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._connection: sqlite3.Connection | None = None
        self._pending: list[Work] = []
        self._flushing: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.commits = 0  # transactions committed (how much grouping happened)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """The unit's result once its transaction is durably committed."""
        loop = asyncio.get_running_loop()
        if self._flushing is not None and self._flushing.get_loop() is not loop:
            raise RuntimeError("a group committer serves one event loop at a time")
        done: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, done))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return await done

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = [work for work in self._pending[:MAX_BATCH] if not work[2].done()]
                del self._pending[:MAX_BATCH]
                if batch:
                    await self._commit(batch)
        finally:
            self._flushing = None

    async def _commit(self, batch: list[Work]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        connection = self._connection
        try:
            if connection is None:
                connection = self._connection = self._open()
            await self._begin(connection)
            tx = SqliteTx(connection)
            for fn, args, _done in batch:
                connection.execute("SAVEPOINT unit")
                try:
                    outcomes.append((True, fn(tx, *args)))
                except Exception as error:  # the unit's own failure, reported to its caller
                    connection.execute("ROLLBACK TO unit")
                    outcomes.append((False, error))
                connection.execute("RELEASE unit")
            await self._off_loop(connection.execute, "COMMIT")
            self.commits += 1
        except Exception as error:
            log.error("group commit of %d units failed: %s", len(batch), error)
            if connection is not None:
                connection.close()  # rolls back whatever is open; the next batch reconnects
            self._connection = None
            outcomes = [(False, error)] * len(batch)
        for (_fn, _args, done), (ok, value) in zip(batch, outcomes, strict=True):
            if done.done():
                continue  # its caller went away; the work stands or falls with the batch
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def _open(self) -> sqlite3.Connection:
        connection = self._connect()
        connection.execute("PRAGMA busy_timeout=0")  # BEGIN on the loop must never wait
        return connection

    async def _begin(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            # Another process holds the write lock: wait for it off the loop.
            await self._off_loop(_begin_waiting, connection)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="imagine-commit")
        await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


def _begin_waiting(connection: sqlite3.Connection) -> None:
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        connection.execute("BEGIN IMMEDIATE")
    finally:
        connection.execute("PRAGMA busy_timeout=0")
