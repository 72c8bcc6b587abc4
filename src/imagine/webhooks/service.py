"""Per-account signing secrets, and a task's delivery history as its owner sees it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from imagine.accounts.service import Principal
from imagine.db.database import Database
from imagine.db.models import Account
from imagine.errors import Forbidden, InvalidRequest, WebhookSecretExists
from imagine.tasks.service import isoformat
from imagine.webhooks import repository
from imagine.webhooks.sealing import SecretBox
from imagine.webhooks.signing import new_secret


class UnknownAccount(LookupError):
    """No account has that id."""


class SecretExists(Exception):
    """The account already has a signing secret and replacing it was not asked for."""


async def create_secret(
    session: AsyncSession, account_id: str, *, rotate: bool, box: SecretBox
) -> str:
    """Give the account a new signing secret and return it (the only time it is
    shown; it is stored sealed by `box`).

    Without `rotate`, an existing secret is kept and `SecretExists` raised, so an
    operator cannot break a working receiver by accident. The conditional
    UPDATE makes two concurrent first calls produce one secret.
    """
    secret = new_secret()
    condition = Account.id == account_id
    if not rotate:
        condition = condition & Account.webhook_secret.is_(None)
    result = await session.execute(
        update(Account)
        .where(condition)
        .values(webhook_secret=box.seal(account_id, secret))
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        return secret
    if await session.scalar(select(Account.id).where(Account.id == account_id)) is None:
        raise UnknownAccount(account_id)
    raise SecretExists(account_id)


async def create_own_secret(
    db: Database, caller: Principal, *, rotate: bool, box: SecretBox
) -> str:
    """The account holder's `create_secret`. Only a live key may do it: the
    secret signs the account's live webhooks too, so a test key (the one handed
    to a CI job) must not be able to read or replace it."""
    if caller.is_test:
        raise Forbidden("A test key cannot create or rotate the webhook signing secret")
    try:
        async with db.write() as session:
            return await create_secret(session, caller.account_id, rotate=rotate, box=box)
    except SecretExists:
        raise WebhookSecretExists(
            "The account already has a webhook signing secret, and it is never shown again; "
            'send {"rotate": true} to replace it (receivers must switch to the new one)'
        ) from None


async def require_signing_secret(db: Database, account_id: str) -> None:
    """Refuse a `callback_url` from an account that cannot sign, so nothing is ever
    delivered unsigned or with a signature its receiver could not check."""
    async with db.read() as session:
        secret = await session.scalar(
            select(Account.webhook_secret).where(Account.id == account_id)
        )
    if not secret:
        raise InvalidRequest(
            f"The callback_url parameter needs a webhook signing secret for account "
            f"{account_id}: create one with POST /v1/webhooks/secret (an operator: "
            f"`imagine webhooks secret {account_id}`)"
        )


def _when(moment: Any) -> str | None:
    return None if moment is None else isoformat(moment)


async def deliveries(db: Database, task_id: str) -> list[dict[str, Any]]:
    """Each webhook event of the task with every attempt (the caller checked ownership)."""
    return [
        {
            "webhook_id": event.id,
            "type": event.event_type,
            "status": event.status,
            "attempt_count": event.attempts,
            "created_at": isoformat(event.created_at),
            "next_attempt_at": (
                _when(event.next_attempt_at) if event.status == repository.PENDING else None
            ),
            "delivered_at": _when(event.delivered_at),
            "attempts": [
                {
                    "attempted_at": isoformat(attempt.attempted_at),
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "duration_ms": attempt.duration_ms,
                }
                for attempt in attempts
            ],
        }
        for event, attempts in await repository.events_for_task(db, task_id)
    ]


async def has_secret(db: Database, account_id: str) -> bool:
    async with db.read() as session:
        stored = await session.scalar(
            select(Account.webhook_secret).where(Account.id == account_id)
        )
    return stored is not None


async def recent_deliveries(db: Database, account_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The account's latest webhook events, newest first, each with its last attempt."""
    return [
        {
            "webhook_id": event.id,
            "task_id": event.task_id,
            "type": event.event_type,
            "status": event.status,
            "attempt_count": event.attempts,
            "created_at": event.created_at,
            "delivered_at": event.delivered_at,
            "last_status_code": None if last is None else last.status_code,
            "last_error": None if last is None else last.error,
        }
        for event, last in await repository.recent_events(db, account_id, limit)
    ]
