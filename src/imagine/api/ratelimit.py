"""Per-key, per-minute request limits (the `limits` library, moving window).

A moving window is exact: a limit of L passes L requests in any 60 seconds
and refuses the next, with no double burst at a window edge. The storage is
in memory for one process; a shared store (Redis) makes it hold across
processes without changing this code.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

__all__ = ["RateLimitState", "RateLimiter", "StorageError"]


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


class RateLimiter:
    def __init__(self, storage: Storage | None = None) -> None:
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())
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

    async def hit(self, identity: str, per_minute: int) -> RateLimitState:
        """Count one request for `identity`; a refused request is not counted."""
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        allowed = await self._limiter.hit(item, identity)
        stats = await self._limiter.get_window_stats(item, identity)
        return RateLimitState(
            allowed=allowed,
            limit=per_minute,
            remaining=stats.remaining,
            reset_time=stats.reset_time,
        )
