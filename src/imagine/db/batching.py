"""Concurrent calls answered by one database round trip per batch.

On PostgreSQL each statement costs a round trip, a wake-up of a server
process and, for a write, a commit with its WAL flush: under load that
overhead, not the work, bounds how many polls and submits a process answers
(and a submit holds its account's row lock until its flush, so one
account's submits queue behind each other's flushes). A `Batcher` lets
calls that arrive together share one statement.

It batches without a timer ("smart batching"): a call that finds fewer than
`in_flight` batches running starts one at the next turn of the event loop,
so a lone call waits for nothing; calls that arrive while the batches run
wait for the next one, which takes them all (up to `max_size`). Every call
in a batch arrived before its statement was sent, so what it answers is at
least as new as the call: a client never sees an older state than one it
was already shown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

RunBatch = Callable[[list[Item]], Awaitable[list[Result]]]


class Batcher(Generic[Item, Result]):
    def __init__(
        self, run: RunBatch[Item, Result], *, in_flight: int = 2, max_size: int = 256
    ) -> None:
        """`run(items)` answers a batch: one result per item, in order; if it
        raises, every call of the batch raises the same error."""
        self._run = run
        self._in_flight = in_flight
        self._max_size = max_size
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._scheduled or not self._waiting or len(self._running) >= self._in_flight:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        batch = [(item, future) for item, future in self._waiting[: self._max_size]]
        del self._waiting[: self._max_size]
        batch = [(item, future) for item, future in batch if not future.done()]
        if batch:
            task = asyncio.ensure_future(self._answer(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)
        self._schedule()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._schedule()

    async def _answer(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop the batches still running (their callers get CancelledError)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()
