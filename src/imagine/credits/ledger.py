"""Where money moves. Every balance change is one conditional UPDATE plus one
ledger row carrying the balance after it, inside the caller's transaction, so
the balance always equals the sum of the ledger.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.db.models import Account, LedgerEntry
from imagine.ids import utcnow


async def _record(
    session: AsyncSession,
    account_id: str,
    kind: str,
    amount: int,
    balance_after: int,
    task_id: str | None = None,
    note: str = "",
) -> None:
    session.add(
        LedgerEntry(
            account_id=account_id,
            kind=kind,
            amount=amount,
            balance_after=balance_after,
            task_id=task_id,
            note=note,
            created_at=utcnow(),
        )
    )
    await session.flush()


async def grant(session: AsyncSession, account_id: str, amount: int, note: str = "") -> int | None:
    """Add credits; returns the new balance, or None when the account does not exist."""
    balance = await session.scalar(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount)
        .returning(Account.balance)
    )
    if balance is None:
        return None
    await _record(session, account_id, "grant", amount, balance, note=note)
    return int(balance)


async def debit(session: AsyncSession, account_id: str, task_id: str, cost: int) -> bool:
    """Charge a task, only if the balance covers it. False means insufficient credits.

    The check and the subtraction are one statement, so concurrent submits can
    never overdraw: the database serialises them on the account row.
    """
    balance = await session.scalar(
        update(Account)
        .where(Account.id == account_id, Account.balance >= cost)
        .values(balance=Account.balance - cost)
        .returning(Account.balance)
    )
    if balance is None:
        return False
    await _record(session, account_id, "debit", -cost, balance, task_id=task_id)
    return True


async def refund(session: AsyncSession, account_id: str, task_id: str, amount: int) -> None:
    """Give a task's charge back. Callers refund only on the transition that
    ends the task, and the ledger's unique (task_id, kind) makes a second
    refund impossible even if that guard were ever bypassed."""
    balance = await session.scalar(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount)
        .returning(Account.balance)
    )
    assert balance is not None, "a task's account cannot disappear"
    await _record(session, account_id, "refund", amount, balance, task_id=task_id)


async def ledger_sum(session: AsyncSession, account_id: str) -> int:
    rows = await session.scalars(
        select(LedgerEntry.amount).where(LedgerEntry.account_id == account_id)
    )
    return sum(rows)
