"""The record of refusals: written with the task's ending, read and reviewed by
operators (`GET /v1/admin/moderation` and the console's moderation page)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.db.models import ModerationRefusal, Task
from imagine.db.pages import keyset_page
from imagine.errors import NotFound
from imagine.ids import has_id_shape, new_id, utcnow
from imagine.moderation.moderator import Refusal

__all__ = ["RefusalListing", "RefusalPage", "add_refusal", "refusal_page", "review_refusal"]

ID_PREFIX = "mod"
UNKNOWN_REFUSAL = NotFound("Refusal not found")


async def add_refusal(session: AsyncSession, task_id: str, refusal: Refusal) -> None:
    """Record `refusal` of `task_id` inside the caller's transaction (the one that
    fails the task), with what the operator will want beside it."""
    task = (
        await session.execute(
            select(Task.account_id, Task.is_test, Task.engine, Task.request).where(
                Task.id == task_id
            )
        )
    ).one()
    session.add(
        ModerationRefusal(
            id=new_id(ID_PREFIX),
            task_id=task_id,
            account_id=task.account_id,
            created_at=utcnow(),
            is_test=task.is_test,
            mode=str(task.request.get("mode", "")),
            engine=task.engine,
            stage=refusal.stage,
            check_name=refusal.check,
            subject=refusal.subject[:100],
            rule=refusal.rule,
            score=refusal.score,
        )
    )


@dataclass(frozen=True)
class RefusalListing:
    refusal_id: str
    task_id: str
    account_id: str
    created_at: datetime
    is_test: bool
    mode: str
    engine: str
    stage: str
    check: str
    subject: str
    rule: str
    score: float | None
    prompt: str
    false_positive: bool
    reviewed_at: datetime | None
    reviewed_by: str | None
    review_note: str


@dataclass(frozen=True)
class RefusalPage:
    refusals: list[RefusalListing]
    has_more: bool

    @property
    def next_after(self) -> str | None:
        return self.refusals[-1].refusal_id if self.has_more else None


_COLUMNS = (ModerationRefusal, Task.request)


def _listing(row: Any) -> RefusalListing:
    refusal: ModerationRefusal = row[0]
    request: dict[str, Any] = row[1] or {}
    return RefusalListing(
        refusal_id=refusal.id,
        task_id=refusal.task_id,
        account_id=refusal.account_id,
        created_at=refusal.created_at,
        is_test=refusal.is_test,
        mode=refusal.mode,
        engine=refusal.engine,
        stage=refusal.stage,
        check=refusal.check_name,
        subject=refusal.subject,
        rule=refusal.rule,
        score=refusal.score,
        prompt=str(request.get("prompt", "")),
        false_positive=refusal.false_positive,
        reviewed_at=refusal.reviewed_at,
        reviewed_by=refusal.reviewed_by,
        review_note=refusal.review_note,
    )


async def refusal_page(
    session: AsyncSession, *, limit: int, after: str | None, false_positive: bool | None = None
) -> RefusalPage:
    """Refusals newest first, with each task's prompt; optionally only those
    marked (or not marked) false positives."""
    query = select(*_COLUMNS).join(Task, Task.id == ModerationRefusal.task_id)
    scope = []
    if false_positive is not None:
        scope.append(ModerationRefusal.false_positive.is_(false_positive))
        query = query.where(*scope)
    rows, has_more = await keyset_page(
        session,
        query,
        created=ModerationRefusal.created_at,
        ident=ModerationRefusal.id,
        id_prefix=ID_PREFIX,
        noun="a refusal",
        scope=scope,
        after=after,
        limit=limit,
    )
    return RefusalPage([_listing(row) for row in rows], has_more)


async def review_refusal(
    session: AsyncSession, refusal_id: str, *, false_positive: bool, note: str, reviewer: str
) -> RefusalListing:
    """Mark a refusal as a false positive (or take the mark back). The task stays
    as it ended: nothing is run again."""
    if not has_id_shape(ID_PREFIX, refusal_id):
        raise UNKNOWN_REFUSAL
    changed = await session.execute(
        update(ModerationRefusal)
        .where(ModerationRefusal.id == refusal_id)
        .values(
            false_positive=false_positive,
            review_note=note[:500],
            reviewed_at=utcnow(),
            reviewed_by=reviewer,
        )
    )
    if not getattr(changed, "rowcount", 0):
        raise UNKNOWN_REFUSAL
    row = (
        await session.execute(
            select(*_COLUMNS)
            .join(Task, Task.id == ModerationRefusal.task_id)
            .where(ModerationRefusal.id == refusal_id)
        )
    ).one()
    return _listing(row)
