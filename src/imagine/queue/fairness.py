"""The order in which tasks are claimed: live before test, fair between accounts.

Oldest-first would let one account's burst of submits push everyone else's
tasks to the back. Instead each task gets, at submit, a place `fair_at` in a
virtual time measured in epoch seconds (virtual-time fair queueing):

    fair_at = max(now, the account's previous fair_at + quantum)

`quantum` depends on the plan (`IMAGINE_QUEUE_QUANTUM_*`). An account with a
backlog has its tasks spaced one quantum apart, so a task submitted later by
another account lands between them, and while accounts compete each is served
in proportion to 1/quantum. An idle account starts again at `now`: idleness
banks no credit. Workers claim the smallest `(is_test, fair_at, id)` among
the available pending tasks (one entry of the index `ix_tasks_queue`, however
many tasks there are), so test tasks wait behind every live one, and `fair_at`
only orders: a lone account's tasks are claimed back to back, however far in
the future their places are. A retried task keeps its place; only its back-off
(`available_at`) holds it.

The trade-off of using real time as the virtual clock: an account whose tasks
were served faster than one per quantum (a burst on an otherwise idle service)
ends with its clock ahead of real time, and until real time catches up its new
tasks are placed behind other accounts' new ones. It never waits for an idle
worker, and the lag is at most what it used beyond its share.

Each account keeps two clocks, one per tier (`accounts.fair_at` and
`test_fair_at`), so test traffic never moves an account's live tasks back.
The clock moves in the submit's own transaction, one UPDATE of the account
row (which a paid submit's debit has just locked anyway), so concurrent
submits of one account get distinct places.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    bindparam,
    case,
    false,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import aliased

from imagine.db.models import Account, Task
from imagine.db.prepared import Tx
from imagine.tasks.states import PENDING

__all__ = ["CLAIM_ORDER", "pending_before", "take_place"]

CLAIM_ORDER = (Task.is_test, Task.fair_at, Task.id)


def _advance(clock: Any) -> Executable:
    moved = clock + bindparam("quantum")
    return (
        update(Account)
        .where(Account.id == bindparam("account_id"))
        .values({clock: case((moved > bindparam("now"), moved), else_=bindparam("now"))})
        .returning(clock.label("fair_at"))
    )


# Built once per tier (statements are compiled once, see imagine.db.prepared).
_ADVANCE = {False: _advance(Account.fair_at), True: _advance(Account.test_fair_at)}


def take_place(tx: Tx, account_id: str, *, is_test: bool, quantum: float, now: float) -> float:
    """Move the account's clock for one more task and return the task's `fair_at`."""
    row = tx.first(_ADVANCE[is_test], {"account_id": account_id, "quantum": quantum, "now": now})
    assert row is not None, "a submit's account exists"
    return float(row["fair_at"])


_other = aliased(Task)


def _pending(*conditions: ColumnElement[bool]) -> ColumnElement[int]:
    return (
        select(func.count())
        .select_from(_other)
        .where(_other.status == PENDING, *conditions)
        .scalar_subquery()
    )


def pending_before() -> ColumnElement[int]:
    """How many pending tasks come before the task of the enclosing query in
    `CLAIM_ORDER`: the tasks a claim takes first, so a queue position is the
    claim order itself. Each count is one range of the queue index: the task's
    own tier before it, plus, for a test task, every pending live one."""
    same_tier = _pending(
        _other.is_test == Task.is_test,
        tuple_(_other.fair_at, _other.id) < tuple_(Task.fair_at, Task.id),
    )
    live = _pending(_other.is_test == false())
    return same_tier + case((Task.is_test, live), else_=0)
