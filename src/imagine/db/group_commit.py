"""Group commit for SQLite: many small transactions, one fsync.

SQLite has one writer, and with `synchronous=FULL` every commit waits for the
disk. Taken one at a time, concurrent submits queue on the write lock and each
pays its own fsync. Here one thread owns a write connection; whatever units of
work arrive while it is busy are run together in one transaction, each inside
its own savepoint, and committed once. A unit that raises rolls back only its
savepoint and gets its exception; the others are unaffected. Nobody is
answered before the commit has returned, so durability is exactly that of a
transaction per unit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from imagine.db.prepared import SqliteTx, Tx

log = logging.getLogger("imagine.db")

T = TypeVar("T")
Work = tuple[Callable[..., Any], tuple[Any, ...], "Future[Any]"]

MAX_BATCH = 512
_STOP = object()


class GroupCommitter:
    """Runs `fn(tx, *args)` units on one connection, in as few commits as load allows."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[Work | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0  # batches committed (how much grouping happened)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """The unit's result once its transaction is durably committed."""
        self._ensure_started()
        done: Future[T] = Future()
        self._queue.put((fn, args, done))
        return await asyncio.wrap_future(done)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join()

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="imagine-group-commit", daemon=True
                    )
                    self._thread.start()

    def _serve(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                batch: list[Work] = []
                item = self._queue.get()
                while item is not _STOP:
                    work: Work = item  # type: ignore[assignment]
                    # A unit whose caller gave up before it started is dropped; once
                    # started it can no longer be cancelled, only committed or not.
                    if work[2].set_running_or_notify_cancel():
                        batch.append(work)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    connection = self._commit(connection, batch)
                if item is _STOP:
                    return
        finally:
            if connection is not None:
                connection.close()

    def _commit(
        self, connection: sqlite3.Connection | None, batch: list[Work]
    ) -> sqlite3.Connection | None:
        """Run and commit one batch; returns the connection to use next (None after
        a failure, so that the next batch starts on a fresh one)."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            if connection is None:
                connection = self._connect()
            tx: Tx = SqliteTx(connection)
            connection.execute("BEGIN IMMEDIATE")
            for fn, args, _done in batch:
                connection.execute("SAVEPOINT unit")
                try:
                    outcomes.append((True, fn(tx, *args)))
                except Exception as error:  # the unit's own failure, reported to its caller
                    connection.execute("ROLLBACK TO unit")
                    outcomes.append((False, error))
                connection.execute("RELEASE unit")
            connection.execute("COMMIT")
            self.commits += 1
        except Exception as error:
            log.error("group commit of %d units failed: %s", len(batch), error)
            if connection is not None:
                connection.close()  # rolls back whatever is open
                connection = None
            outcomes = [(False, error)] * len(batch)
        for (_fn, _args, done), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
        return connection
