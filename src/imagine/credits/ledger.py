"""Where money moves. Every balance change is one conditional UPDATE plus one
ledger row carrying the balance after it, inside the caller's transaction, so
the balance always equals the sum of the ledger.

The functions are plain code over `Tx`, so the same ones run in the submit
path's group commit and, through `imagine.db.database.in_session`, inside ORM
sessions elsewhere.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Executable, bindparam, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.credits import MAX_BALANCE
from imagine.db.models import Account, LedgerEntry
from imagine.db.prepared import Tx
from imagine.ids import utcnow


class BalanceLimit(ValueError):
    """A grant that would take the balance beyond `MAX_BALANCE`; nothing changed."""


_ADD = (
    update(Account)
    .where(Account.id == bindparam("account_id"))
    .values(balance=Account.balance + bindparam("amount"))
    .returning(Account.balance)
)
# A grant never overflows the column: the room left is checked in the same
# statement (written so that nothing in it can overflow either).
_ADD_WITHIN_LIMIT = (
    update(Account)
    .where(
        Account.id == bindparam("account_id"),
        Account.balance <= literal(MAX_BALANCE, BigInteger) - bindparam("amount", type_=BigInteger),
    )
    .values(balance=Account.balance + bindparam("amount"))
    .returning(Account.balance)
)
_EXISTS = select(Account.id).where(Account.id == bindparam("account_id"))
# The check and the subtraction are one statement, so concurrent submits can
# never overdraw: the database serialises them on the account row.
_SUBTRACT_IF_COVERED = (
    update(Account)
    .where(Account.id == bindparam("account_id"), Account.balance >= bindparam("amount"))
    .values(balance=Account.balance - bindparam("amount"))
    .returning(Account.balance)
)
_RECORD = insert(LedgerEntry).values(
    account_id=bindparam("account_id"),
    kind=bindparam("kind"),
    amount=bindparam("signed"),
    balance_after=bindparam("balance_after"),
    task_id=bindparam("task_id"),
    note=bindparam("note"),
    created_at=bindparam("created_at"),
)


def _move(
    tx: Tx,
    statement: Executable,
    account_id: str,
    kind: str,
    amount: int,
    task_id: str | None = None,
    note: str = "",
) -> int | None:
    row = tx.first(statement, {"account_id": account_id, "amount": amount})
    if row is None:
        return None
    balance = int(row["balance"])
    tx.run(
        _RECORD,
        {
            "account_id": account_id,
            "kind": kind,
            "signed": -amount if kind == "debit" else amount,
            "balance_after": balance,
            "task_id": task_id,
            "note": note,
            "created_at": utcnow(),
        },
    )
    return balance


def grant(tx: Tx, account_id: str, amount: int, note: str = "") -> int | None:
    """Add credits; returns the new balance, or None when the account does not exist.
    Raises `BalanceLimit` when the balance would exceed `MAX_BALANCE`."""
    if not 0 < amount <= MAX_BALANCE:
        raise BalanceLimit(f"a grant must be from 1 to {MAX_BALANCE} credits, not {amount}")
    balance = _move(tx, _ADD_WITHIN_LIMIT, account_id, "grant", amount, note=note)
    if balance is None and tx.first(_EXISTS, {"account_id": account_id}) is not None:
        raise BalanceLimit(
            f"granting {amount} credits would take the balance of {account_id} beyond {MAX_BALANCE}"
        )
    return balance


def debit(tx: Tx, account_id: str, task_id: str, cost: int) -> bool:
    """Charge a task, only if the balance covers it. False means insufficient credits."""
    return _move(tx, _SUBTRACT_IF_COVERED, account_id, "debit", cost, task_id=task_id) is not None


def refund(tx: Tx, account_id: str, task_id: str, amount: int) -> None:
    """Give a task's charge back. Callers refund only on the transition that
    ends the task, and the ledger's unique (task_id, kind) makes a second
    refund impossible even if that guard were ever bypassed."""
    balance = _move(tx, _ADD, account_id, "refund", amount, task_id=task_id)
    assert balance is not None, "a task's account cannot disappear"


async def ledger_sum(session: AsyncSession, account_id: str) -> int:
    rows = await session.scalars(
        select(LedgerEntry.amount).where(LedgerEntry.account_id == account_id)
    )
    return sum(rows)
