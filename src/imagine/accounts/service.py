"""Accounts and their keys: creation, listing, revocation, authentication.

The CLI, the HTTP API (an account's own keys, and the admin routes) and any
page built on them call these functions, so one set of rules holds everywhere.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.accounts import keys
from imagine.credits import ledger
from imagine.db.database import Database, in_session
from imagine.db.models import Account, ApiKey
from imagine.db.pages import keyset_page
from imagine.errors import Forbidden, InvalidRequest, NotFound
from imagine.ids import has_id_shape, new_id, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved once per request from the bearer key."""

    account_id: str
    plan: str
    key_id: str
    is_test: bool = False
    is_admin: bool = False

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
    is_admin: bool = False
    name: str = ""
    display: str = ""
    created_at: datetime | None = None


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
    is_admin: bool = False
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class KeyPage:
    keys: list[KeyListing]
    has_more: bool


class KeyLimitReached(InvalidRequest):
    """The account already holds as many unrevoked keys as it may."""


async def create_account(
    session: AsyncSession,
    *,
    plan: str,
    credits: int,
    name: str = "",
    is_test: bool = False,
    is_admin: bool = False,
) -> IssuedKey:
    """A new account with its first key; `credits` are granted through the ledger."""
    account = Account(id=new_id("acct"), name=name, plan=plan, balance=0, created_at=utcnow())
    session.add(account)
    await session.flush()
    if credits:
        await in_session(session, ledger.grant, account.id, credits, "initial credits")
    return await create_key(
        session,
        account.id,
        plan=plan,
        credits=credits,
        name=name,
        is_test=is_test,
        is_admin=is_admin,
    )


async def create_key(
    session: AsyncSession,
    account_id: str,
    *,
    plan: str,
    credits: int,
    name: str = "",
    is_test: bool = False,
    is_admin: bool = False,
) -> IssuedKey:
    """A new key for an account. A test key's tasks cost nothing and run on the
    preview engine, with an outcome the caller may force. An admin key opens
    `/v1/admin/`; it is never a test key, since what it does moves real credits."""
    if is_admin and is_test:
        raise ValueError("an admin key cannot be a test key")
    key = keys.generate_key()
    row = ApiKey(
        id=new_id("key"),
        account_id=account_id,
        name=name,
        key_hash=keys.hash_key(key),
        display=keys.display_form(key),
        created_at=utcnow(),
        is_test=is_test,
        is_admin=is_admin,
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
        is_admin=is_admin,
        name=name,
        display=row.display,
        created_at=row.created_at,
    )


async def add_key(
    session: AsyncSession, caller: Principal, *, name: str, test: bool | None, max_keys: int
) -> IssuedKey:
    """A new key for the caller's own account (never an admin key). A test key
    makes only test keys, so handing one to a CI job hands over nothing live;
    `test` left out means a key of the caller's own kind.

    The account row is locked first (SQLite's write transactions are already
    serial), so concurrent calls cannot together pass `max_keys`."""
    is_test = caller.is_test if test is None else test
    if caller.is_test and not is_test:
        raise Forbidden("A test key can create only test keys")
    account = await session.scalar(
        select(Account).where(Account.id == caller.account_id).with_for_update()
    )
    if account is None:
        raise NotFound("Account not found")
    active = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.account_id == account.id, ApiKey.revoked_at.is_(None))
    )
    if int(active or 0) >= max_keys:
        raise KeyLimitReached(
            f"The account already has {max_keys} active keys, the most it may hold; "
            "revoke one first"
        )
    return await create_key(
        session, account.id, plan=account.plan, credits=account.balance, name=name, is_test=is_test
    )


# Built once: a statement object caches its compiled SQL, so the hot path skips
# rebuilding and re-hashing it on every request.
_KEY_BY_HASH = (
    select(
        ApiKey.id,
        ApiKey.key_hash,
        ApiKey.account_id,
        ApiKey.is_test,
        ApiKey.is_admin,
        ApiKey.last_used_at,
        Account.plan,
    )
    .join(Account, Account.id == ApiKey.account_id)
    .where(ApiKey.key_hash == bindparam("digest"), ApiKey.revoked_at.is_(None))
)

LAST_USE_RESOLUTION = timedelta(seconds=60)
"""A key's `last_used_at` is rewritten at most this often."""


async def authenticate(db: Database, key: str) -> Principal | None:
    """The principal behind a bearer key, or None for a malformed, unknown or revoked one."""
    if not keys.is_well_formed(key):
        return None
    return await _principal_for(db, keys.hash_key(key))


async def _principal_for(db: Database, digest: str) -> Principal | None:
    row = await db.read_one(_KEY_BY_HASH, {"digest": digest})
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    last_used = row["last_used_at"]
    if last_used is None or utcnow() - last_used >= LAST_USE_RESOLUTION:
        _note_use_soon(db, row["id"])
    return Principal(
        account_id=row["account_id"],
        plan=row["plan"],
        key_id=row["id"],
        is_test=row["is_test"],
        is_admin=row["is_admin"],
    )


_noting: set[asyncio.Task[None]] = set()


def _note_use_soon(db: Database, key_id: str) -> None:
    """Record the key's use after the request, not in its way: a failure to
    write a timestamp must never fail an authenticated request."""
    task = asyncio.get_running_loop().create_task(note_use(db, key_id))
    _noting.add(task)
    task.add_done_callback(_noting.discard)


async def note_use(db: Database, key_id: str) -> None:
    now = utcnow()
    try:
        async with db.write() as session:
            await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == key_id,
                    or_(
                        ApiKey.last_used_at.is_(None),
                        ApiKey.last_used_at < now - LAST_USE_RESOLUTION,
                    ),
                )
                .values(last_used_at=now)
            )
    except Exception:
        log.warning("could not record the use of key %s", key_id, exc_info=True)


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


def _listing(key: ApiKey, account: Account) -> KeyListing:
    return KeyListing(
        key_id=key.id,
        display=key.display,
        name=key.name,
        account_id=account.id,
        plan=account.plan,
        balance=account.balance,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        is_test=key.is_test,
        is_admin=key.is_admin,
        last_used_at=key.last_used_at,
    )


def _keys(account_id: str | None, test_only: bool) -> Select[ApiKey, Account]:
    query = select(ApiKey, Account).join(Account, Account.id == ApiKey.account_id)
    if account_id is not None:
        query = query.where(ApiKey.account_id == account_id)
    if test_only:
        query = query.where(ApiKey.is_test.is_(True))
    return query


async def list_keys(session: AsyncSession) -> list[KeyListing]:
    """Every key, oldest first (the operator's `imagine keys list`)."""
    rows = await session.execute(_keys(None, False).order_by(ApiKey.created_at))
    return [_listing(k, a) for k, a in rows]


async def key_page(
    session: AsyncSession,
    *,
    account_id: str | None,
    test_only: bool = False,
    limit: int,
    after: str | None,
) -> KeyPage:
    """Keys newest first, of one account or (admins) of all; `after` is the last
    key id of the previous page. Ordered by (created_at, id), so a key created
    meanwhile lands before the cursor and a page never repeats or skips one."""
    scope = [] if account_id is None else [ApiKey.account_id == account_id]
    if test_only:
        scope.append(ApiKey.is_test.is_(True))
    rows, has_more = await keyset_page(
        session,
        _keys(account_id, test_only),
        created=ApiKey.created_at,
        ident=ApiKey.id,
        id_prefix="key",
        noun="a key",
        scope=scope,
        after=after,
        limit=limit,
    )
    return KeyPage(keys=[_listing(k, a) for k, a in rows], has_more=has_more)


async def find_key(
    session: AsyncSession, key_id: str, *, account_id: str | None, test_only: bool = False
) -> KeyListing | None:
    """One key, within one account when `account_id` is given (another account's
    key is then as missing as an unknown one)."""
    if not has_id_shape("key", key_id):
        return None  # names nothing: answered without a query
    row = (await session.execute(_keys(account_id, test_only).where(ApiKey.id == key_id))).first()
    return None if row is None else _listing(row[0], row[1])


async def revoke_own_key(session: AsyncSession, caller: Principal, key_id: str) -> KeyListing:
    """Revoke a key of the caller's account (the calling key included: it stops
    working within the key cache's time, as with `imagine keys revoke`).

    A test key reaches only test keys; an admin key is revoked only by an
    admin, so an app's key cannot take the operator's away. Revoking a revoked
    key changes nothing and answers as the first time did."""
    found = await find_key(session, key_id, account_id=caller.account_id, test_only=caller.is_test)
    if found is None:
        raise NotFound("Key not found")
    if found.is_admin and not caller.is_admin:
        raise Forbidden("An admin key can be revoked only with an admin key")
    return await _revoked(session, found)


async def revoke_any_key(session: AsyncSession, key_id: str) -> KeyListing:
    """An admin's revocation: any key of any account."""
    found = await find_key(session, key_id, account_id=None)
    if found is None:
        raise NotFound("Key not found")
    return await _revoked(session, found)


async def _revoked(session: AsyncSession, found: KeyListing) -> KeyListing:
    await revoke_key(session, found.key_id)
    after = await find_key(session, found.key_id, account_id=found.account_id)
    assert after is not None, "a key is never deleted"
    return after


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
