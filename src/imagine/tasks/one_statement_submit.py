"""A submit in one statement, for PostgreSQL: one round trip instead of seven.

The ordinary submit (`tasks.service._submit_once`) is a transaction of
several statements, each a round trip to the database; on SQLite they cost
microseconds, on PostgreSQL each one waits for a server process on the
other side of a socket. Here the same unit is one statement of
data-modifying CTEs, run alone on asyncpg's pool (so it is its own
transaction, prepared once per connection):

    charged    UPDATE accounts: the conditional debit and the account's
               clock in the fair queue, only if no record holds the
               Idempotency-Key yet
    debited    INSERT the ledger row (balance after) from `charged`
    enqueued   INSERT the task row from `charged`
    remembered INSERT the idempotency record from `enqueued`

Every insert reads the row `charged` returned, so either all of it happens
or none of it. It answers only the ordinary case, a new task; anything else
(credits short, the key already known, images held in storage) returns None
and the caller runs the ordinary submit, which says exactly why. Two first
uses of one key racing here: one insert loses on the record's primary key,
the statement fails whole, and the ordinary submit finds the winner's record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    Executable,
    Integer,
    String,
    Text,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)

from imagine.db.database import Database
from imagine.db.models import Account, IdempotencyRecord, LedgerEntry, Task, UTCDateTime
from imagine.tasks.states import PENDING


def _statement(is_test: bool) -> Executable:
    clock = Account.test_fair_at if is_test else Account.fair_at
    account_id = bindparam("account_id", type_=String)
    cost = bindparam("cost", type_=BigInteger)
    now = bindparam("now", type_=UTCDateTime())
    key = bindparam("key", type_=String)
    moved = clock + bindparam("quantum", type_=Double)
    known_key = exists().where(
        IdempotencyRecord.account_id == account_id, IdempotencyRecord.key == key
    )
    charged = (
        update(Account)
        .where(Account.id == account_id, Account.balance >= cost, ~known_key)
        .values(
            {
                Account.balance: Account.balance - cost,
                clock: func.greatest(moved, bindparam("now_epoch", type_=Double)),
            }
        )
        .returning(Account.balance, clock.label("fair_at"))
        .cte("charged")
    )
    debited = (
        insert(LedgerEntry)
        .from_select(
            ["account_id", "kind", "amount", "balance_after", "task_id", "note", "created_at"],
            select(
                account_id,
                literal("debit"),
                -cost,
                charged.c.balance,
                bindparam("task_id", type_=String),
                literal(""),
                now,
            ).where(cost > 0),
        )
        .cte("debited")
    )
    columns: dict[str, Any] = {
        "id": bindparam("task_id", type_=String),
        "account_id": account_id,
        "status": literal(PENDING),
        "request": bindparam("request", type_=JSON),
        "cost": cost,
        "consumed_credits": cost,
        "engine": bindparam("engine", type_=String),
        "outputs": bindparam("outputs", type_=JSON),
        "progress": literal(0),
        "attempts": literal(0),
        "max_attempts": bindparam("max_attempts", type_=Integer),
        "created_at": now,
        "updated_at": now,
        "available_at": now,
        "fair_at": charged.c.fair_at,
        "is_test": literal(is_test, Boolean),
        "test_outcome": bindparam("test_outcome", type_=String),
        "callback_url": bindparam("callback_url", type_=Text),
        "input_bytes": literal(0, BigInteger),
        "traceparent": bindparam("traceparent", type_=String),
    }
    enqueued = (
        insert(Task)
        .from_select(list(columns), select(*columns.values()).select_from(charged))
        .returning(Task.id)
        .cte("enqueued")
    )
    remembered = (
        insert(IdempotencyRecord)
        .from_select(
            ["account_id", "key", "request_hash", "task_id", "created_at"],
            select(account_id, key, bindparam("request_hash", type_=String), enqueued.c.id, now)
            .select_from(enqueued)
            .where(key.is_not(None)),
        )
        .cte("remembered")
    )
    return select(func.count().label("enqueued")).select_from(enqueued).add_cte(debited, remembered)


_SUBMIT = {False: _statement(False), True: _statement(True)}


async def try_submit(
    db: Database,
    *,
    account_id: str,
    is_test: bool,
    task_id: str,
    request: dict[str, Any],
    cost: int,
    engine: str,
    max_attempts: int,
    quantum: float,
    now: datetime,
    key: str | None,
    request_hash: str,
    test_outcome: str | None,
    traceparent: str | None = None,
) -> bool | None:
    """True once the task is committed; False when the ordinary submit must
    decide (see the module doc); None when this database has no such path."""
    try:
        rows = await db.write_one(
            _SUBMIT[is_test],
            {
                "account_id": account_id,
                "task_id": task_id,
                "request": request,
                "cost": cost,
                "engine": engine,
                "outputs": [],
                "max_attempts": max_attempts,
                "quantum": quantum,
                "now": now,
                "now_epoch": now.timestamp(),
                "key": key,
                "request_hash": request_hash,
                "test_outcome": test_outcome,
                "callback_url": request.get("callback_url"),
                "traceparent": traceparent,
            },
        )
    except asyncpg.exceptions.IntegrityConstraintViolationError:
        return False  # a first use of the same key won the race
    if rows is None:
        return None
    return bool(rows[0]["enqueued"])
