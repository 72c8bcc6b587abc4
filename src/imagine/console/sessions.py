"""Server-side sessions of the web console.

The browser holds a random token (256 bits) in an HttpOnly cookie; the
database holds its SHA-256 and the key it was opened with, never the key.
Each request joins the key: a revoked key's sessions end on their next
request. Sessions end after `idle` seconds without a request and, whatever
the activity, `absolute` seconds after sign-in. The CSRF token is derived
from the session token with the server secret, so it needs no storage and
changes with every sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, insert, or_, select, update

from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Account, ApiKey, ConsoleSession
from imagine.ids import utcnow

TOUCH_EVERY = timedelta(seconds=60)
"""`last_seen_at` is written at most this often per session (reads stay reads)."""

_SESSION = (
    select(
        ConsoleSession.created_at,
        ConsoleSession.last_seen_at,
        ApiKey.id,
        ApiKey.account_id,
        ApiKey.display,
        ApiKey.is_test,
        ApiKey.is_admin,
        Account.plan,
    )
    .join(ApiKey, ApiKey.id == ConsoleSession.key_id)
    .join(Account, Account.id == ApiKey.account_id)
    .where(ConsoleSession.token_hash == bindparam("token_hash"), ApiKey.revoked_at.is_(None))
)


@dataclass(frozen=True)
class SignedIn:
    """A live session: who it acts as and the token its forms must carry."""

    principal: Principal
    key_display: str
    csrf_token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(
        self, db: Database, secret: bytes, *, idle_seconds: float, absolute_seconds: float
    ) -> None:
        self._db = db
        self._csrf_key = hmac.new(secret, b"console-csrf", hashlib.sha256).digest()
        self.idle = timedelta(seconds=idle_seconds)
        self.absolute = timedelta(seconds=absolute_seconds)

    def csrf_token(self, token: str) -> str:
        return hmac.new(self._csrf_key, token.encode(), hashlib.sha256).hexdigest()

    async def open(self, principal: Principal) -> str:
        """A new session for a key that just signed in; returns the cookie's token.
        Ended sessions of every key are swept on the way."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        async with self._db.write() as session:
            await session.execute(
                delete(ConsoleSession).where(
                    or_(
                        ConsoleSession.last_seen_at < now - self.idle,
                        ConsoleSession.created_at < now - self.absolute,
                    )
                )
            )
            await session.execute(
                insert(ConsoleSession).values(
                    token_hash=_digest(token),
                    key_id=principal.key_id,
                    created_at=now,
                    last_seen_at=now,
                )
            )
        return token

    async def resolve(self, token: str | None) -> SignedIn | None:
        """The session behind a cookie, or None (unknown, ended, or its key revoked)."""
        if not token or len(token) > 100:
            return None
        digest = _digest(token)
        row = await self._db.read_one(_SESSION, {"token_hash": digest})
        if row is None:
            return None
        now = utcnow()
        if row["last_seen_at"] < now - self.idle or row["created_at"] < now - self.absolute:
            await self.close(token)
            return None
        if now - row["last_seen_at"] >= TOUCH_EVERY:
            await self._touch(digest, now)
        principal = Principal(
            account_id=row["account_id"],
            plan=row["plan"],
            key_id=row["id"],
            is_test=row["is_test"],
            is_admin=row["is_admin"],
        )
        return SignedIn(principal, row["display"], self.csrf_token(token))

    async def _touch(self, digest: str, now: datetime) -> None:
        async with self._db.write() as session:
            await session.execute(
                update(ConsoleSession)
                .where(ConsoleSession.token_hash == digest)
                .values(last_seen_at=now)
            )

    async def close(self, token: str) -> None:
        async with self._db.write() as session:
            await session.execute(
                delete(ConsoleSession).where(ConsoleSession.token_hash == _digest(token))
            )
