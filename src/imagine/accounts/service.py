"""Accounts and their keys: creation, listing, revocation, authentication."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.accounts import keys
from imagine.credits import ledger
from imagine.db.database import Database, in_session
from imagine.db.models import Account, ApiKey
from imagine.ids import new_id, utcnow


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved once per request from the bearer key."""

    account_id: str
    plan: str
    key_id: str
    is_test: bool = False

    @property
    def rate_limit_identity(self) -> str:
        """Whose per-minute window a request counts against: the account's, since
        the plan and its limit are the account's (N keys must not mean N times
        the limit). Test keys share a window of their own, so an integration's
        test traffic never uses up the live service's requests."""
        return f"{self.account_id}:test" if self.is_test else self.account_id


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: the only moment the full key exists outside the client."""

    key: str
    key_id: str
    account_id: str
    plan: str
    credits: int
    is_test: bool = False


@dataclass(frozen=True)
class KeyListing:
    key_id: str
    display: str
    name: str
    account_id: str
    plan: str
    balance: int
    created_at: datetime
    revoked_at: datetime | None
    is_test: bool


async def create_account(
    session: AsyncSession, *, plan: str, credits: int, name: str = "", is_test: bool = False
) -> IssuedKey:
    account = Account(id=new_id("acct"), name=name, plan=plan, balance=0, created_at=utcnow())
    session.add(account)
    await session.flush()
    if credits:
        await in_session(session, ledger.grant, account.id, credits, "initial credits")
    return await create_key(
        session, account.id, plan=plan, credits=credits, name=name, is_test=is_test
    )


async def create_key(
    session: AsyncSession,
    account_id: str,
    *,
    plan: str,
    credits: int,
    name: str = "",
    is_test: bool = False,
) -> IssuedKey:
    """A new key for an account. A test key's tasks cost nothing and run on the
    preview engine, with an outcome the caller may force."""
    key = keys.generate_key()
    row = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        key_hash=keys.hash_key(key),
        display=keys.display_form(key),
        created_at=utcnow(),
        is_test=is_test,
    )
    session.add(row)
    await session.flush()
    return IssuedKey(
        key=key,
        key_id=row.id,
        account_id=account_id,
        plan=plan,
        credits=credits,
        is_test=is_test,
    )


# Built once: a statement object caches its compiled SQL, so the hot path skips
# rebuilding and re-hashing it on every request.
_KEY_BY_HASH = (
    select(ApiKey.id, ApiKey.key_hash, ApiKey.account_id, ApiKey.is_test, Account.plan)
    .join(Account, Account.id == ApiKey.account_id)
    .where(ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None))
)


async def authenticate(db: Database, key: str) -> Principal | None:
    """The principal behind a bearer key, or None for a malformed, unknown or revoked one."""
    if not keys.is_well_formed(key):
        return None
    return await _principal_for(db, keys.hash_key(key))


async def _principal_for(db: Database, digest: str) -> Principal | None:
    row = await db.read_one(_KEY_BY_HASH, {"digest": digest})
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    return Principal(
        account_id=row["account_id"], plan=row["plan"], key_id=row["id"], is_test=row["is_test"]
    )


class KeyCache:
    """Valid keys remembered for `ttl` seconds, so a client polling many times a
    second costs one lookup per `ttl`. The price is stated and bounded: a key
    revoked (or an account re-planned) elsewhere keeps its old answer for at
    most `ttl` seconds in each API process. Unknown keys are never remembered,
    and entries are keyed by the key's hash, not the key.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, db: Database, ttl: float, clock: Callable[[], float] = time.monotonic):
        self._db = db
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, key: str) -> Principal | None:
        if not keys.has_key_shape(key):  # before hashing: a bearer token may be any size
            return None
        digest = keys.hash_key(key)
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is not None:
            if entry[0] > now:
                return entry[1]
            del self._entries[digest]
        if not keys.is_well_formed(key):
            return None
        principal = await _principal_for(self._db, digest)
        if principal is not None and self._ttl > 0:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))  # the oldest entry
            self._entries[digest] = (now + self._ttl, principal)
        return principal


async def list_keys(session: AsyncSession) -> list[KeyListing]:
    rows = await session.execute(
        select(ApiKey, Account)
        .join(Account, Account.id == ApiKey.account_id)
        .order_by(ApiKey.created_at)
    )
    return [
        KeyListing(
            key_id=k.id,
            display=k.display,
            name=k.name,
            account_id=a.id,
            plan=a.plan,
            balance=a.balance,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
            is_test=k.is_test,
        )
        for k, a in rows
    ]


async def revoke_key(session: AsyncSession, key_id: str) -> bool:
    """Revoke a key; False when no active key has that id."""
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


async def count_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)
