"""Submits in one statement, for PostgreSQL: the submits that arrive together
share one round trip and one commit.

The ordinary submit (`tasks.service._submit_once`) is a transaction of
several statements, each a round trip to the database; on SQLite they cost
microseconds, on PostgreSQL each one waits for a server process on the
other side of a socket, and the account's row stays locked from the debit
until the commit's WAL flush, so one account's submits queue behind each
other's flushes. Here the submits gathered by `Database.batched` go as one
statement, alone on asyncpg's pool (so it is its own transaction, prepared
once per connection), given as parallel arrays, one element per submit:

    wanted     the submits, in arrival order
    fresh      those whose Idempotency-Key (if any) no record holds yet
               and no earlier submit of the batch carries
    locked     their accounts, locked in id order (so two batches never
               wait on each other in a cycle), with balance and queue clocks
    paid       those the balance covers, in arrival order: each one's
               balance after is the balance less its own cost and those of
               the account's submits before it in the batch
    placed     each one's place in the fair queue: the account's clock moved
               one quantum per task, never behind now (`queue.fairness`)
    charged    UPDATE each account once: the batch's debits, the new clocks
    debited    INSERT the ledger rows (balance after each)
    enqueued   INSERT the task rows
    remembered INSERT the idempotency records

It answers only the ordinary case, a new task: a submit it leaves out
(credits short, the key already known) goes to the ordinary submit, which
says exactly why. So does every submit of a batch that fails as a whole:
two first uses of one key racing (one insert loses on the record's primary
key), or the database breaking a lock cycle. Either way nothing of the
failed statement is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Double,
    Integer,
    String,
    Text,
    bindparam,
    text,
)
from sqlalchemy.types import TypeEngine

from imagine.db.database import Database
from imagine.db.models import UTCDateTime
from imagine.db.prepared import Row, WriteInDoubt
from imagine.db.unavailable import CONNECT_TIMEOUT_SECONDS
from imagine.ids import utcnow
from imagine.tasks.states import PENDING

# One array per column of the submits, element types as in the models.
_ELEMENTS: dict[str, type[TypeEngine[Any]]] = {
    "task_id": String,
    "account_id": String,
    "is_test": Boolean,
    "cost": BigInteger,
    "engine": String,
    "request_json": Text,
    "max_attempts": Integer,
    "quantum": Double,
    "key": String,
    "request_hash": String,
    "test_outcome": String,
    "callback_url": Text,
    "traceparent": String,
}

_SUBMITS = (
    text(
        """
WITH wanted AS (
    SELECT * FROM unnest(
        CAST(:task_id AS text[]), CAST(:account_id AS text[]), CAST(:is_test AS boolean[]),
        CAST(:cost AS bigint[]), CAST(:engine AS text[]), CAST(:request_json AS text[]),
        CAST(:max_attempts AS integer[]), CAST(:quantum AS float8[]), CAST(:key AS text[]),
        CAST(:request_hash AS text[]), CAST(:test_outcome AS text[]),
        CAST(:callback_url AS text[]), CAST(:traceparent AS text[])
    ) WITH ORDINALITY AS w(task_id, account_id, is_test, cost, engine, request,
                           max_attempts, quantum, key, request_hash, test_outcome,
                           callback_url, traceparent, ord)
),
fresh AS (
    SELECT w.* FROM wanted w
    WHERE w.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM idempotency_keys k WHERE k.account_id = w.account_id AND k.key = w.key
    ) AND NOT EXISTS (
        SELECT 1 FROM wanted e WHERE e.account_id = w.account_id AND e.key = w.key
                                 AND e.ord < w.ord
    )
),
locked AS MATERIALIZED (
    SELECT a.id, a.balance, a.fair_at, a.test_fair_at FROM accounts a
    WHERE a.id IN (SELECT account_id FROM fresh)
    ORDER BY a.id
    FOR UPDATE
),
costed AS (
    SELECT f.*, l.balance - sum(f.cost) OVER (PARTITION BY f.account_id ORDER BY f.ord)
               AS balance_after,
           CASE WHEN f.is_test THEN l.test_fair_at ELSE l.fair_at END AS clock
    FROM fresh f JOIN locked l ON l.id = f.account_id
),
paid AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.account_id, c.is_test ORDER BY c.ord) AS nth
    FROM costed c WHERE c.balance_after >= 0
),
placed AS MATERIALIZED (
    SELECT p.*, greatest(p.clock + p.quantum * p.nth,
                         :now_epoch + p.quantum * (p.nth - 1)) AS fair_at
    FROM paid p
),
charged AS (
    UPDATE accounts a SET
        balance = a.balance - t.spent,
        fair_at = coalesce(t.live_clock, a.fair_at),
        test_fair_at = coalesce(t.test_clock, a.test_fair_at)
    FROM (
        SELECT account_id, sum(cost) AS spent,
               max(fair_at) FILTER (WHERE NOT is_test) AS live_clock,
               max(fair_at) FILTER (WHERE is_test) AS test_clock
        FROM placed GROUP BY account_id
    ) t
    WHERE a.id = t.account_id
),
debited AS (
    INSERT INTO ledger (account_id, kind, amount, balance_after, task_id, note, created_at)
    SELECT account_id, 'debit', -cost, balance_after, task_id, '', :now
    FROM placed WHERE cost > 0
),
enqueued AS (
    INSERT INTO tasks (id, account_id, status, request, cost, consumed_credits, engine,
                       outputs, progress, attempts, max_attempts, created_at, updated_at,
                       available_at, fair_at, is_test, test_outcome, callback_url,
                       input_bytes, traceparent)
    SELECT task_id, account_id, :pending, CAST(request AS json), cost, cost, engine,
           CAST('[]' AS json), 0, 0, max_attempts, :now, :now, :now, fair_at, is_test,
           test_outcome, callback_url, 0, traceparent
    FROM placed
),
remembered AS (
    INSERT INTO idempotency_keys (account_id, key, request_hash, task_id, created_at)
    SELECT account_id, key, request_hash, task_id, :now FROM placed WHERE key IS NOT NULL
)
SELECT task_id FROM placed
"""
    )
    .bindparams(
        *(bindparam(name, type_=ARRAY(type_)) for name, type_ in _ELEMENTS.items()),
        bindparam("now", type_=UTCDateTime()),
        bindparam("now_epoch", type_=Double),
        bindparam("pending", type_=String),
    )
    .columns(task_id=String)
)


# Which of a batch's tasks exist (`_settle`).
_CREATED = (
    text("SELECT id AS task_id FROM tasks WHERE id = ANY(:task_ids)")
    .bindparams(bindparam("task_ids", type_=ARRAY(String)))
    .columns(task_id=String)
)


@dataclass(frozen=True)
class NewTask:
    """One submit's row, as the statement takes it."""

    task_id: str
    account_id: str
    is_test: bool
    cost: int
    engine: str
    request: dict[str, Any]
    max_attempts: int
    quantum: float  # how far the task moves its account's clock (queue.fairness)
    key: str | None
    request_hash: str
    test_outcome: str | None
    traceparent: str | None = None

    @property
    def request_json(self) -> str:
        return json.dumps(self.request)

    @property
    def callback_url(self) -> str | None:
        url = self.request.get("callback_url")
        return None if url is None else str(url)


async def try_submit(db: Database, task: NewTask) -> bool | None:
    """True once the task is committed; False when the ordinary submit must
    decide (see the module doc); None when this database has no such path."""
    if db.is_sqlite:
        return None
    return await db.batched(_submit_together, task)


async def _submit_together(db: Database, tasks: list[NewTask]) -> list[bool]:
    now: datetime = utcnow()
    columns = {name: [getattr(task, name) for task in tasks] for name in _ELEMENTS}
    try:
        rows = await db.write_one(
            _SUBMITS, {**columns, "now": now, "now_epoch": now.timestamp(), "pending": PENDING}
        )
    except (
        asyncpg.exceptions.IntegrityConstraintViolationError,  # a first use of a key lost
        asyncpg.exceptions.TransactionRollbackError,  # a deadlock broken by the database
    ):
        return [False] * len(tasks)
    except WriteInDoubt as doubt:
        rows = await _settle(db, doubt, tasks)
    committed = {row["task_id"] for row in rows or ()}
    return [t.task_id in committed for t in tasks]


async def _settle(db: Database, doubt: WriteInDoubt, tasks: list[NewTask]) -> list[Row]:
    """The tasks a statement whose answer was lost did create.

    Answering 503 at once would be wrong for those it committed (the client
    would be told "not submitted" about a charged task), so the answer waits,
    at most as long as a connection attempt may, for the server process that
    ran it to be gone; the tasks found then are created, the others never
    will be and go to the ordinary submit. If the database stays out of
    reach, the doubt stays too and the caller answers 503 (docs/deploy.md).
    """
    if not await db.outlived(doubt.backend_pid, within=CONNECT_TIMEOUT_SECONDS):
        raise doubt
    return await db.read_all(_CREATED, {"task_ids": [t.task_id for t in tasks]})
