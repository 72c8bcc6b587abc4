"""When to try a request again, and after how long. Pure decisions: no I/O, no sleeping.

Only failures that a later attempt can fix are retried: 429 (after the wait
the server asked for), 5xx, and lost connections. Every other 4xx means the
request itself is wrong and would fail again. Whether a request may be
repeated at all (a GET, or a POST with an Idempotency-Key) is the caller's
decision; this module only says when.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

from imagine.client._exceptions import (
    APIConnectionError,
    ImagineError,
    RateLimited,
    ServerError,
    retry_after_seconds,
)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    max_wait: float = 60.0  # the longest single wait; a 429 asking for more is raised at once
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def delay(self, attempt: int, error: ImagineError) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None to give up with `error`."""
        if attempt >= self.max_retries:
            return None
        if isinstance(error, RateLimited):
            wait = error.retry_after
            if wait is None and error.reset_at is not None:
                wait = max(0.0, (error.reset_at - datetime.now(UTC)).total_seconds())
            if wait is None:
                wait = self.backoff(attempt)
            return wait if wait <= self.max_wait else None
        if isinstance(error, ServerError):
            asked = retry_after_seconds(error.headers)
            wait = asked if asked is not None else self.backoff(attempt)
            return min(wait, self.max_wait)
        if isinstance(error, APIConnectionError):
            return self.backoff(attempt)
        return None

    def backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter", so many clients do not retry in step."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)
