"""Per-account, per-minute request limits: exact moving windows (the gate
counts each request against `Principal.rate_limit_identity`).

A moving window is exact: a limit of L passes L requests in any 60 seconds
and refuses the next, with no double burst at a window edge.

Shared by several API processes, the windows live in Redis and the `limits`
library keeps them (its moving-window strategy, one Lua call per hit). In one
process they live in memory, kept here: `limits`' in-memory moving window
inserts each hit at the front of a list (work proportional to the window)
and takes an asyncio lock per call (or, in its synchronous form, starts a
timer thread every 10 ms). On the status path that cost about 12% of a
request and stalled the slowest ones; a deque per identity costs a few
microseconds and never waits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

__all__ = ["LocalWindows", "RateLimitState", "RateLimiter", "StorageError"]

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_time: float  # epoch seconds when the window has room again

    @property
    def reset_at(self) -> int:
        return math.ceil(self.reset_time)

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_time - time.time())))
        return headers


class LocalWindows:
    """Moving windows in this process's memory: per identity, the times of the
    requests counted in the last minute, oldest first (at most `limit` of them).

    Same rules as `limits`' moving window: a hit at the window's edge still
    counts, a refused request is not counted, and the window has room again
    when its oldest counted request is a minute old.
    """

    SWEEP_EVERY = 10_000  # hits between removals of identities idle for a minute

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._until_sweep = self.SWEEP_EVERY

    def hit(self, identity: str, limit: int) -> RateLimitState:
        now = self._clock()
        cutoff = now - WINDOW_SECONDS
        hits = self._hits.get(identity)
        if hits is None:
            hits = self._hits[identity] = deque()
        while hits and hits[0] < cutoff:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(cutoff)
        return RateLimitState(
            allowed=allowed,
            limit=limit,
            remaining=limit - len(hits),
            reset_time=(hits[0] if hits else now) + WINDOW_SECONDS,
        )

    def _sweep(self, cutoff: float) -> None:
        self._until_sweep = self.SWEEP_EVERY
        for identity in [key for key, hits in self._hits.items() if not hits or hits[-1] < cutoff]:
            del self._hits[identity]


class RateLimiter:
    def __init__(self, storage: Storage | None = None) -> None:
        self._storage = storage
        self._shared = MovingWindowRateLimiter(storage) if storage is not None else None
        self._local = LocalWindows() if storage is None else None
        self._items: dict[int, RateLimitItemPerMinute] = {}

    @classmethod
    def from_url(cls, redis_url: str | None) -> RateLimiter:
        """In memory without a URL; otherwise Redis, with store failures raised as
        `StorageError` (the gate decides between 503 and failing open)."""
        if redis_url is None:
            return cls()
        storage = RedisStorage(
            redis_url,
            implementation="redispy",
            wrap_exceptions=True,
            key_prefix="imagine:ratelimit",
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )
        return cls(storage)

    @property
    def is_shared(self) -> bool:
        """True when the windows live in a store (Redis) that can be down."""
        return self._storage is not None

    async def ping(self) -> bool:
        """Whether the shared store answers (always True in memory)."""
        return self._storage is None or bool(await self._storage.check())

    async def hit(self, identity: str, per_minute: int) -> RateLimitState:
        """Count one request for `identity`; a refused request is not counted."""
        if self._local is not None:
            return self._local.hit(identity, per_minute)
        assert self._shared is not None
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        allowed = await self._shared.hit(item, identity)
        stats = await self._shared.get_window_stats(item, identity)
        return RateLimitState(
            allowed=allowed,
            limit=per_minute,
            remaining=stats.remaining,
            reset_time=stats.reset_time,
        )
