"""`Batcher`: calls that arrive while batches run share the next one; a lone
call waits for nothing; errors and cancellations reach exactly their calls."""

from __future__ import annotations

import asyncio

import pytest

from imagine.db.batching import Batcher


class Recorder:
    """A batch function that records each batch and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: int | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_on in items:
            raise ValueError("broken batch")
        return [item * 10 for item in items]


async def turns() -> None:
    """Let the event loop run what is ready (a batch starts a turn after its call)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_lone_call_is_answered_at_once() -> None:
    run = Recorder()
    batcher = Batcher(run, in_flight=2)
    assert await batcher(1) == 10
    assert run.batches == [[1]]


async def test_calls_arriving_while_batches_run_share_the_next_one() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, in_flight=1)
    first = asyncio.ensure_future(batcher(1))
    await turns()
    assert run.batches == [[1]]  # running, held open
    later = [asyncio.ensure_future(batcher(n)) for n in range(2, 7)]
    await turns()
    assert run.batches == [[1]]  # the only slot is busy: they wait
    run.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40, 50, 60]
    assert run.batches == [[1], [2, 3, 4, 5, 6]]


async def test_batches_are_bounded_in_size_and_number() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, in_flight=2, max_size=3)
    calls = [asyncio.ensure_future(batcher(n)) for n in range(8)]
    await turns()
    assert run.batches == [[0, 1, 2], [3, 4, 5]]  # two running, two more waiting
    run.gate.set()
    assert await asyncio.gather(*calls) == [n * 10 for n in range(8)]
    assert run.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]


async def test_an_error_reaches_every_call_of_its_batch_and_no_other() -> None:
    run = Recorder()
    run.gate.clear()
    run.fail_on = 3
    batcher = Batcher(run, in_flight=1)
    first = asyncio.ensure_future(batcher(1))
    await turns()
    broken = [asyncio.ensure_future(batcher(n)) for n in (2, 3)]
    run.gate.set()
    assert await first == 10
    for call in broken:
        with pytest.raises(ValueError, match="broken batch"):
            await call
    assert await batcher(4) == 40  # the batcher goes on


async def test_a_cancelled_call_leaves_the_others_answered() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, in_flight=1)
    first = asyncio.ensure_future(batcher(1))
    await turns()
    gone, kept = asyncio.ensure_future(batcher(2)), asyncio.ensure_future(batcher(3))
    await turns()
    gone.cancel()  # a client that went away before its batch started
    run.gate.set()
    assert await first == 10 and await kept == 30
    assert run.batches == [[1], [3]]


async def test_close_cancels_what_is_running_and_waiting() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run, in_flight=1)
    calls = [asyncio.ensure_future(batcher(n)) for n in range(3)]
    await turns()
    await batcher.close()
    for call in calls:
        with pytest.raises(asyncio.CancelledError):
            await call
