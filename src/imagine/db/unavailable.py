"""Telling "the database cannot be reached right now" from every other error.

During a failover or a restart the database refuses connections, drops the
ones in use, or answers that it is shutting down or starting up. Such an
error is the database's absence, not a fault of the request: the API answers
503 `SERVICE_UNAVAILABLE` (the client retries, with its Idempotency-Key for a
submit), and a worker waits and tries the same write again. Nothing else is
classed this way, so a real bug still surfaces as a 500.
"""

from __future__ import annotations

import errno
import logging
import sys

import asyncpg
from sqlalchemy import exc as sa

# How PostgreSQL's absence shows itself through asyncpg, depending on when it
# is noticed: refused or reset sockets, a closed connection, an administrator
# shutdown or a server still starting up.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)

# Connecting and waiting for a pooled connection give up after this long, so a
# request during an outage is answered (503) well within any client's timeout.
CONNECT_TIMEOUT_SECONDS = 5.0


def database_unavailable(error: BaseException) -> bool:
    """True when `error` (or what it wraps) says the database is out of reach."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.TimeoutError | sa.InterfaceError | TimeoutError):
            return True
        if isinstance(current, CONNECTION_LOST):
            return _about_a_connection(current)
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


def _about_a_connection(error: BaseException) -> bool:
    """An OSError counts only when it is about a connection (not a full disk)."""
    if not isinstance(error, OSError) or isinstance(error, ConnectionError | TimeoutError):
        return True
    return error.errno in _NETWORK_ERRNOS


def log_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled by a loop that will try again: one line
    while the database is away (a failover is expected, not a bug), the
    traceback otherwise."""
    error = sys.exc_info()[1]
    if error is not None and database_unavailable(error):
        log.warning(message + ": database unavailable (%r)", *args, error)
    else:
        log.exception(message, *args)
