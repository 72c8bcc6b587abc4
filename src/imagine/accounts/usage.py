"""What an account can see about itself: balance, spend, tasks by status, ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select

from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Account, LedgerEntry, Task
from imagine.ids import utcnow
from imagine.tasks.service import isoformat
from imagine.tasks.states import ALL

WINDOWS = {"24h": timedelta(hours=24), "30d": timedelta(days=30)}


async def account_summary(db: Database, principal: Principal) -> dict[str, Any]:
    """Plan, balance, and per window: credits spent (after refunds) and tasks by status.
    Test keys see only their test tasks; live keys only live ones."""
    now = utcnow()
    async with db.read() as session:
        account = await session.get(Account, principal.account_id)
        assert account is not None, "an authenticated key has an account"
        usage: dict[str, Any] = {}
        for name, span in WINDOWS.items():
            rows = await session.execute(
                select(Task.status, func.count(), func.coalesce(func.sum(Task.consumed_credits), 0))
                .where(
                    Task.account_id == principal.account_id,
                    Task.is_test == principal.is_test,
                    Task.created_at >= now - span,
                )
                .group_by(Task.status)
            )
            counts = dict.fromkeys(ALL, 0)
            spent = 0
            for status, count, consumed in rows:
                counts[status] = int(count)
                spent += int(consumed)
            usage[name] = {"credits_spent": spent, "tasks": counts}
    return {
        "account_id": account.id,
        "plan": account.plan,
        "balance": account.balance,
        "test": principal.is_test,
        "usage": usage,
    }


@dataclass(frozen=True)
class LedgerPage:
    entries: list[dict[str, Any]]
    has_more: bool


async def ledger_page(
    db: Database, principal: Principal, *, limit: int, after: int | None
) -> LedgerPage:
    """Ledger rows, newest first; `after` is the last id of the previous page."""
    async with db.read() as session:
        query = select(LedgerEntry).where(LedgerEntry.account_id == principal.account_id)
        if after is not None:
            query = query.where(LedgerEntry.id < after)
        rows = list(await session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit + 1)))
    entries = [
        {
            "id": row.id,
            "kind": row.kind,
            "amount": row.amount,
            "balance_after": row.balance_after,
            "task_id": row.task_id,
            "note": row.note,
            "created_at": isoformat(row.created_at),
        }
        for row in rows[:limit]
    ]
    return LedgerPage(entries=entries, has_more=len(rows) > limit)


@dataclass(frozen=True)
class DaySpend:
    day: date
    debited: int
    refunded: int

    @property
    def spent(self) -> int:
        return self.debited - self.refunded


def _day(column: Any, db: Database) -> Any:
    """The UTC calendar day of a stored time, in SQL."""
    if db.is_sqlite:
        return func.date(column)  # SQLite keeps UTC text
    return func.date(func.timezone("UTC", column))


async def spend_per_day(db: Database, principal: Principal, *, days: int) -> list[DaySpend]:
    """Credits debited and refunded on each of the last `days` UTC days, oldest
    first, days without spending included; summed by the database."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, time.min, tzinfo=UTC)
    day = _day(LedgerEntry.created_at, db)
    async with db.read() as session:
        rows = await session.execute(
            select(day, LedgerEntry.kind, func.sum(LedgerEntry.amount))
            .where(
                LedgerEntry.account_id == principal.account_id,
                LedgerEntry.created_at >= start,
                LedgerEntry.kind.in_(("debit", "refund")),
            )
            .group_by(day, LedgerEntry.kind)
        )
        totals: dict[date, dict[str, int]] = {}
        for when, kind, amount in rows:
            moment = when if isinstance(when, date) else date.fromisoformat(str(when))
            totals.setdefault(moment, {})[kind] = abs(int(amount))
    return [
        DaySpend(
            day=first + timedelta(days=offset),
            debited=totals.get(first + timedelta(days=offset), {}).get("debit", 0),
            refunded=totals.get(first + timedelta(days=offset), {}).get("refund", 0),
        )
        for offset in range(days)
    ]
