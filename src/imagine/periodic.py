"""`Periodic`: background work repeated until the process stops.

The chores that run beside the workers (the sweep of left-over input images,
the presence heartbeat) share one loop: do the work at once and then every
`interval` seconds, log a failure and try again next time (a database blip
must not end the chore), wake at once on `stop()`, then `finish()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("imagine")


class Periodic:
    name = "periodic work"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopping = asyncio.Event()

    async def tick(self) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """After the last tick, once stopped."""

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("%s failed; trying again in %g s", self.name, self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
        await self.finish()
