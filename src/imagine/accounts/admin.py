"""What an admin key may see and do across accounts: list them, open one with
its first key, grant credits. Revoking any key is `service.revoke_any_key`.

The rules are the CLI's (`imagine keys create`, `imagine credits grant`), and
money moves only through `imagine.credits.ledger`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.accounts.service import IssuedKey, Principal, create_account
from imagine.credits import MAX_BALANCE, ledger
from imagine.db.database import in_session
from imagine.db.models import Account, ApiKey
from imagine.db.pages import keyset_page
from imagine.errors import InvalidRequest, NotFound
from imagine.ids import has_id_shape
from imagine.settings import PLANS


@dataclass(frozen=True)
class AccountListing:
    account_id: str
    name: str
    plan: str
    balance: int
    created_at: datetime
    active_keys: int
    webhook_secret: bool  # whether one is set (it is never shown again)


@dataclass(frozen=True)
class AccountPage:
    accounts: list[AccountListing]
    has_more: bool


_ACTIVE_KEYS = (
    select(ApiKey.account_id, func.count().label("active"))
    .where(ApiKey.revoked_at.is_(None))
    .group_by(ApiKey.account_id)
    .subquery()
)


def _with_active_keys() -> Select[Account, Any]:
    return select(Account, func.coalesce(_ACTIVE_KEYS.c.active, 0)).outerjoin(
        _ACTIVE_KEYS, _ACTIVE_KEYS.c.account_id == Account.id
    )


def _listing(account: Account, active: int) -> AccountListing:
    return AccountListing(
        account_id=account.id,
        name=account.name,
        plan=account.plan,
        balance=account.balance,
        created_at=account.created_at,
        active_keys=int(active),
        webhook_secret=account.webhook_secret is not None,
    )


async def account_page(session: AsyncSession, *, limit: int, after: str | None) -> AccountPage:
    """Accounts newest first; `after` is the last account id of the previous page."""
    rows, has_more = await keyset_page(
        session,
        _with_active_keys(),
        created=Account.created_at,
        ident=Account.id,
        id_prefix="acct",
        noun="an account",
        after=after,
        limit=limit,
    )
    return AccountPage(
        accounts=[_listing(account, active) for account, active in rows], has_more=has_more
    )


async def find_account(session: AsyncSession, account_id: str) -> AccountListing:
    if not has_id_shape("acct", account_id):
        raise NotFound("Account not found")
    row = (await session.execute(_with_active_keys().where(Account.id == account_id))).first()
    if row is None:
        raise NotFound("Account not found")
    return _listing(row[0], row[1])


async def grant_credits(
    session: AsyncSession, admin: Principal, account_id: str, amount: int, note: str
) -> int:
    """Add credits to an account as one ledger row; returns the new balance. The
    row's note names the admin key that granted them."""
    if not has_id_shape("acct", account_id):
        raise NotFound("Account not found")
    recorded = f"granted with admin key {admin.key_id}" + (f": {note}" if note else "")
    try:
        balance = await in_session(session, ledger.grant, account_id, amount, recorded[:200])
    except ledger.BalanceLimit as exc:
        raise InvalidRequest(f"{exc}; nothing was granted") from None
    if balance is None:
        raise NotFound("Account not found")
    return balance


async def open_account(
    session: AsyncSession, *, plan: str, credits: int, name: str, is_test: bool
) -> IssuedKey:
    """`imagine keys create` for an admin: an account on `plan` with `credits`
    granted through the ledger, and its first key (never an admin key: those
    are made only with the CLI, by whoever runs the server)."""
    if plan not in PLANS:
        raise InvalidRequest(f"The plan parameter must be one of: {', '.join(PLANS)}")
    if not 0 <= credits <= MAX_BALANCE:
        raise InvalidRequest(f"The credits parameter must be from 0 to {MAX_BALANCE}")
    return await create_account(session, plan=plan, credits=credits, name=name, is_test=is_test)
