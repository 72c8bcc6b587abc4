"""Submitting a task (the charge and the task in one transaction) and reading it back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Label,
    Select,
    String,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from imagine.accounts.service import Principal
from imagine.credits import ledger
from imagine.db.database import Database
from imagine.db.models import Account, IdempotencyRecord, LedgerEntry, Task
from imagine.db.pages import keyset_page
from imagine.db.prepared import Row, Tx
from imagine.errors import (
    Conflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    RateLimited,
    TaskFinished,
)
from imagine.ids import has_id_shape, new_id, utcnow
from imagine.queue import repository as queue
from imagine.queue.fairness import pending_before, take_place
from imagine.storage.base import Storage
from imagine.tasks import one_statement_submit
from imagine.tasks.inputs import InputStore
from imagine.tasks.schemas import (
    GenerationRequest,
    StoredImage,
    stored_images_in,
    summarise_data_url,
)
from imagine.tasks.states import COMPLETED, FINISHED, PENDING, PROCESSING


@dataclass(frozen=True)
class SubmitPolicy:
    cost: int
    engine: str
    max_attempts: int
    idempotency_ttl: timedelta
    queue_quantum: float  # how far the task moves its account's place (queue.fairness)
    account_input_bytes: int = 512 * 1024 * 1024
    """Most bytes of input images the account's unfinished tasks may hold in storage."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def request_fingerprint(request: GenerationRequest) -> str:
    """SHA-256 of the request's canonical JSON, data: images included."""
    if not request.uploads:
        canonical = json.dumps(request.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
    # The same text, hashed piece by piece: built whole, a request of seven
    # large images would briefly take twice its size again.
    digest = hashlib.sha256()
    for piece in _CANONICAL.iterencode(request.to_json()):
        digest.update(piece.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Submission:
    """One submit as the unit of work sees it (built on the event loop)."""

    principal: Principal
    task_id: str
    request: dict[str, Any]
    policy: SubmitPolicy
    idempotency_key: str | None
    fingerprint: str
    test_outcome: str | None
    input_bytes: int = 0
    traceparent: str | None = None


async def submit(
    db: Database,
    principal: Principal,
    request: GenerationRequest,
    policy: SubmitPolicy,
    idempotency_key: str | None = None,
    test_outcome: str | None = None,
    inputs: InputStore | None = None,
    *,
    task_id: str | None = None,
    traceparent: str | None = None,
) -> str:
    """Charge and enqueue one generation; returns the task id once committed.

    Debit, ledger row, task row and idempotency record commit together or not
    at all. With an `Idempotency-Key`, a repeat of the same request returns the
    first task without charging again; a different request under the same key
    is a conflict. Two concurrent first uses (PostgreSQL; SQLite has one
    writer) race on the record's primary key: the loser sees the winner's
    record on its second pass.

    `data:` images (`request.uploads`) go to `inputs` before the transaction
    and are deleted again unless this submit created the task.

    `task_id` names the task if this submit creates it (a caller that passes
    one tells a new task from a replay by comparing); `traceparent` links the
    worker's span of the task to the submitting request's trace.
    """
    fingerprint = request_fingerprint(request) if idempotency_key else ""
    task_id = task_id or new_id("task")

    def unit(row: GenerationRequest, input_bytes: int = 0) -> _Submission:
        return _Submission(
            principal,
            task_id,
            row.to_json(),
            policy,
            idempotency_key,
            fingerprint,
            test_outcome,
            input_bytes,
            traceparent,
        )

    if not request.uploads:
        return await _commit(db, unit(request))
    if inputs is None:
        raise ValueError("a request with data: images needs an InputStore")
    size = sum(len(data) for data in request.uploads.values())
    if size > policy.account_input_bytes:
        raise InvalidRequest(
            f"The images take {size} bytes, more than the {policy.account_input_bytes} "
            "an account's unfinished tasks may hold"
        )
    stored = await inputs.save(task_id, request)
    submission = unit(stored, size)
    try:
        accepted = await _commit(db, submission)
    except Exception:
        # Refused or failed: no task holds them. (When the caller goes away
        # instead, the task may still commit with its batch: the files stay,
        # and the sweep removes them if it did not.)
        await inputs.discard(stored.stored_images)
        raise
    if accepted != task_id:  # an idempotent replay: the first task has its own
        await inputs.discard(stored.stored_images)
    return accepted


async def _commit(db: Database, submission: _Submission) -> str:
    if not submission.input_bytes and await _in_one_statement(db, submission):
        return submission.task_id
    idempotency_key = submission.idempotency_key
    for _ in range(2):
        try:
            return await db.transaction(_submit_once, submission)
        except IntegrityError:
            if idempotency_key is None:
                raise
    raise Conflict("A request with this Idempotency-Key is still being processed")


async def _in_one_statement(db: Database, submission: _Submission) -> bool:
    """The ordinary case in one statement shared with the submits arriving with
    it, where the database allows it (`one_statement_submit`); False leaves the
    decision to `_submit_once`."""
    principal, policy = submission.principal, submission.policy
    committed = await one_statement_submit.try_submit(
        db,
        one_statement_submit.NewTask(
            task_id=submission.task_id,
            account_id=principal.account_id,
            is_test=principal.is_test,
            cost=policy.cost,
            engine=policy.engine,
            request=submission.request,
            max_attempts=policy.max_attempts,
            quantum=policy.queue_quantum,
            key=submission.idempotency_key,
            request_hash=submission.fingerprint,
            test_outcome=submission.test_outcome,
            traceparent=submission.traceparent,
        ),
    )
    return bool(committed)


_IDEMPOTENCY_RECORD = select(IdempotencyRecord.__table__).where(
    IdempotencyRecord.account_id == bindparam("account_id"),
    IdempotencyRecord.key == bindparam("key"),
)
_FORGET_IDEMPOTENCY = delete(IdempotencyRecord).where(
    IdempotencyRecord.account_id == bindparam("account_id"),
    IdempotencyRecord.key == bindparam("key"),
)
_REMEMBER_IDEMPOTENCY = insert(IdempotencyRecord)
_ENQUEUE = insert(Task)
# The account's row, locked (PostgreSQL; SQLite's writers are serialised), so
# concurrent image submits of one account count each other's held inputs.
_LOCK_ACCOUNT = select(Account.id).where(Account.id == bindparam("account_id")).with_for_update()
_HELD_INPUTS = select(func.coalesce(func.sum(Task.input_bytes), 0).label("held")).where(
    Task.account_id == bindparam("account_id"), Task.input_bytes > 0
)
HELD_INPUTS_RETRY_SECONDS = 30


def _check_held_inputs(tx: Tx, account_id: str, adding: int, policy: SubmitPolicy) -> None:
    """Refuse a submit that would take the account's stored inputs over its limit.

    429 rather than 400: the request is valid and the limit frees itself as
    the account's tasks end (their inputs are deleted then), so waiting and
    retrying is the right answer, which is what 429 with Retry-After says."""
    tx.first(_LOCK_ACCOUNT, {"account_id": account_id})
    found = tx.first(_HELD_INPUTS, {"account_id": account_id})
    held = int(found["held"]) if found is not None else 0
    if held + adding > policy.account_input_bytes:
        raise RateLimited(
            f"This account's unfinished tasks hold {held} bytes of input images; these "
            f"{adding} more would pass the limit of {policy.account_input_bytes}. "
            "Retry when some of them have finished",
            headers={"Retry-After": str(HELD_INPUTS_RETRY_SECONDS)},
        )


def _submit_once(tx: Tx, submission: _Submission) -> str:
    principal, policy, key = submission.principal, submission.policy, submission.idempotency_key
    now = utcnow()
    if key is not None:
        known = {"account_id": principal.account_id, "key": key}
        record = tx.first(_IDEMPOTENCY_RECORD, known)
        if record is not None and record["created_at"] > now - policy.idempotency_ttl:
            if record["request_hash"] != submission.fingerprint:
                raise Conflict("This Idempotency-Key was already used with a different request")
            return str(record["task_id"])
        if record is not None:
            tx.run(_FORGET_IDEMPOTENCY, known)
    task_id = submission.task_id
    if submission.input_bytes:
        _check_held_inputs(tx, principal.account_id, submission.input_bytes, policy)
    if policy.cost > 0 and not ledger.debit(tx, principal.account_id, task_id, policy.cost):
        raise InsufficientCredits(
            f"Insufficient credits: this generation costs {policy.cost} credits"
        )
    fair_at = take_place(
        tx,
        principal.account_id,
        is_test=principal.is_test,
        quantum=policy.queue_quantum,
        now=now.timestamp(),
    )
    tx.run(
        _ENQUEUE,
        {
            "id": task_id,
            "account_id": principal.account_id,
            "status": PENDING,
            "request": submission.request,
            "cost": policy.cost,
            "consumed_credits": policy.cost,
            "engine": policy.engine,
            "outputs": [],
            "progress": 0,
            "attempts": 0,
            "max_attempts": policy.max_attempts,
            "created_at": now,
            "updated_at": now,
            "available_at": now,
            "fair_at": fair_at,
            "is_test": principal.is_test,
            "test_outcome": submission.test_outcome,
            "callback_url": submission.request.get("callback_url"),
            "input_bytes": submission.input_bytes,
            "traceparent": submission.traceparent,
        },
    )
    if key is not None:
        tx.run(
            _REMEMBER_IDEMPOTENCY,
            {
                "account_id": principal.account_id,
                "key": key,
                "request_hash": submission.fingerprint,
                "task_id": task_id,
                "created_at": now,
            },
        )
    return task_id


_NOT_DELETED = Task.deleted_at.is_(None)

# What the status view, the queue estimate and the deliveries listing read;
# fewer columns to convert on the most frequent read of all.
_VIEW_COLUMNS = (
    Task.id,
    Task.status,
    Task.request,
    Task.outputs,
    Task.progress,
    Task.consumed_credits,
    Task.error_message,
    Task.engine,
    Task.created_at,
    Task.updated_at,
    Task.available_at,
    Task.cancel_requested_at,
    Task.is_test,
    Task.callback_url,
)
_other = aliased(Task)


def _if_pending(count: ColumnElement[int], label: str) -> Label[int | None]:
    """A count evaluated only for a pending task (a CASE branch runs only when taken)."""
    return case((Task.status == PENDING, count), else_=None).label(label)


def _task_view(which: ColumnElement[bool]) -> Select[Any]:
    """The status view of the tasks `which` selects, with for a pending one the
    pending tasks before it in the claim order (a range of the queue index) and
    those running."""
    return select(
        Task.account_id,
        *_VIEW_COLUMNS,
        _if_pending(pending_before(), "queue_ahead"),
        _if_pending(
            select(func.count())
            .select_from(_other)
            .where(_other.status == PROCESSING)
            .scalar_subquery(),
            "queue_running",
        ),
    ).where(which, _NOT_DELETED)


# Built once, so the compiled forms are reused.
_TASK_BY_ID = _task_view(Task.id == bindparam("task_id"))
_TASKS_BY_IDS = _task_view(Task.id == any_(bindparam("task_ids", type_=ARRAY(String))))


async def _tasks_by_ids(db: Database, task_ids: list[str]) -> list[Row | None]:
    """The polls that arrive together, in one statement (`Database.batched`)."""
    if len(task_ids) == 1:
        rows = await db.read_all(_TASK_BY_ID, {"task_id": task_ids[0]})
    else:
        rows = await db.read_all(_TASKS_BY_IDS, {"task_ids": list(set(task_ids))})
    found = {row["id"]: row for row in rows}
    return [found.get(task_id) for task_id in task_ids]


async def get_task(db: Database, principal: Principal, task_id: str) -> Row:
    """The caller's task as a row (column name → value); another account's task, or
    a deleted one, is indistinguishable from none. A row, not an ORM object: building one costs
    more than the read itself on the polling path."""
    if not has_id_shape("task", task_id):
        raise NotFound("Task not found")
    row = await db.batched(_tasks_by_ids, task_id)
    if row is None or row["account_id"] != principal.account_id:
        raise NotFound("Task not found")
    return row


def task_row(task: Task) -> Row:
    """An ORM task in the form `status_view` takes."""
    return {column.key: getattr(task, column.key) for column in _VIEW_COLUMNS}


def isoformat(moment: datetime) -> str:
    """UTC to the second, `2026-01-31T12:00:00Z` (stored datetimes are all UTC)."""
    return moment.isoformat(timespec="seconds")[:19] + "Z"


def public_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as echoed to its owner; data: images are summarised, not repeated."""
    shown = dict(request)
    images = shown.get("images") or []
    if images:
        shown["images"] = [_shown_image(image) for image in images]
    else:
        shown.pop("images", None)
    return shown


def _shown_image(image: str | dict[str, Any]) -> str:
    if isinstance(image, dict):  # a StoredImage
        return str(image["shown"])
    return summarise_data_url(image) if image.startswith("data:") else image


def status_view(task: Row, file_url: Callable[[str], str]) -> dict[str, Any]:
    """The `data` object of `GET /v1/status`: the seed's fields first, then additive ones."""
    completed = task["status"] == COMPLETED
    return {
        "consumed_credits": task["consumed_credits"],
        "created_at": isoformat(task["created_at"]),
        "status": task["status"],
        "task_id": task["id"],
        "error_message": task["error_message"],
        "request": public_request(task["request"]),
        "response": [file_url(key) for key in task["outputs"]] if completed else [],
        "progress": task["progress"],
        "updated_at": isoformat(task["updated_at"]),
        "engine": task["engine"],
        "cancel_requested": task["cancel_requested_at"] is not None,
        "test": task["is_test"],
    }


async def _own_task_for_update(session: AsyncSession, principal: Principal, task_id: str) -> Task:
    """The caller's task, locked for this transaction; `NotFound` for any other."""
    task = None
    if has_id_shape("task", task_id):
        task = await session.scalar(
            select(Task)
            .where(Task.id == task_id, Task.account_id == principal.account_id, _NOT_DELETED)
            .with_for_update()
        )
    if task is None:
        raise NotFound("Task not found")
    return task


async def cancel(
    db: Database, principal: Principal, task_id: str, inputs: InputStore | None = None
) -> Row:
    """Cancel the caller's task. Pending: cancelled and refunded now. Processing:
    the worker is asked to stop (it refunds when the engine stops, within
    seconds). Finished: `TaskFinished`, nothing changes."""
    ended: list[StoredImage] = []
    ending: queue.Ended | None = None
    async with db.write() as session:
        task = await _own_task_for_update(session, principal, task_id)
        if task.status in FINISHED:
            raise TaskFinished(f"Task is already {task.status}; nothing to cancel")
        if task.status == PENDING:
            held = stored_images_in(task.request) if task.input_bytes else []
            ending = await queue.cancel_pending(session, task_id)
            if ending is not None:
                ended = held
        elif task.cancel_requested_at is None:
            task.cancel_requested_at = utcnow()
    if ending is not None:
        ending.record()  # committed
    if ended and inputs is not None:
        await inputs.discard(ended)  # after the commit: a rollback keeps them
    return await get_task(db, principal, task_id)


async def delete_task(
    db: Database, principal: Principal, task_id: str, storage: Storage, inputs: InputStore
) -> None:
    """Delete the caller's task: its videos are removed and no face shows it again;
    its ledger rows stay. A pending task is cancelled (and refunded) first; a
    processing one cannot be deleted until it ends (cancel it, or wait)."""
    async with db.write() as session:
        task = await _own_task_for_update(session, principal, task_id)
        if task.status == PROCESSING:
            raise InvalidRequest(
                f"Task {task_id} is being generated; it can be deleted once it has ended"
            )
        held = stored_images_in(task.request) if task.input_bytes else []
        ending = await queue.cancel_pending(session, task_id) if task.status == PENDING else None
        outputs = list(task.outputs)
        await session.execute(
            update(Task).where(Task.id == task_id).values(deleted_at=utcnow(), outputs=[])
        )
    if ending is not None:
        ending.record()  # committed: counted as cancelled and refunded
    # After the commit: a rollback keeps the files with the task.
    await asyncio.to_thread(_delete_files, storage, outputs)
    if held:
        await inputs.discard(held)


def _delete_files(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


@dataclass(frozen=True)
class TaskHistory:
    """What a task's page shows beyond its status: when it ran, how often, and
    what it cost (the debit and any refund in the ledger)."""

    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    cost: int
    charges: list[dict[str, Any]]


async def task_history(db: Database, principal: Principal, task_id: str) -> TaskHistory:
    if not has_id_shape("task", task_id):
        raise NotFound("Task not found")
    async with db.read() as session:
        task = await session.scalar(
            select(Task).where(
                Task.id == task_id, Task.account_id == principal.account_id, _NOT_DELETED
            )
        )
        if task is None:
            raise NotFound("Task not found")
        # By task id alone, on the unique (task_id, kind) index: the task's
        # charges are its account's by construction, and with the account in
        # the filter SQLite walks the account's whole ledger in id order instead.
        entries = await session.scalars(
            select(LedgerEntry).where(LedgerEntry.task_id == task_id).order_by(LedgerEntry.id)
        )
        charges = [
            {"kind": entry.kind, "amount": entry.amount, "created_at": entry.created_at}
            for entry in entries
        ]
    return TaskHistory(
        started_at=task.started_at,
        finished_at=task.finished_at,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        cost=task.cost,
        charges=charges,
    )


@dataclass(frozen=True)
class TaskPage:
    tasks: list[Row]
    has_more: bool


async def list_tasks(
    db: Database,
    principal: Principal,
    *,
    status: str | None,
    limit: int,
    after: str | None,
    oldest_first: bool = False,
) -> TaskPage:
    """The caller's tasks, newest first unless `oldest_first` (a test key sees its
    account's test tasks, a live key the live ones)."""
    return await account_tasks(
        db,
        principal.account_id,
        is_test=principal.is_test,
        status=status,
        limit=limit,
        after=after,
        oldest_first=oldest_first,
    )


async def account_tasks(
    db: Database,
    account_id: str,
    *,
    is_test: bool,
    status: str | None,
    limit: int,
    after: str | None,
    oldest_first: bool = False,
) -> TaskPage:
    """An account's live or test tasks, newest first (or oldest first). The cursor
    is the last task id seen: rows are ordered by (created_at, id), so a page
    never repeats or skips one (see `imagine.db.pages`)."""
    mine = Task.account_id == account_id
    query = select(*_VIEW_COLUMNS).where(mine, Task.is_test == is_test, _NOT_DELETED)
    if status is not None:
        query = query.where(Task.status == status)
    async with db.read() as session:
        rows, has_more = await keyset_page(
            session,
            query,
            created=Task.created_at,
            ident=Task.id,
            id_prefix="task",
            noun="a task",
            scope=[mine],
            after=after,
            limit=limit,
            oldest_first=oldest_first,
        )
    return TaskPage(tasks=[dict(row._mapping) for row in rows], has_more=has_more)


_RECENT_RUNS = (
    select(Task.started_at, Task.finished_at)
    .where(Task.status == COMPLETED, Task.finished_at.is_not(None))
    .order_by(Task.finished_at.desc())
    .limit(bindparam("sample"))
)


class RecentDurations:
    """How long recent tasks took, averaged and cached briefly: polls of pending
    tasks ask for it constantly, and it changes only as tasks finish. One
    caller refreshes it while the others keep using the previous value."""

    SAMPLE = 50
    TTL_SECONDS = 5.0

    def __init__(self) -> None:
        self._average: float | None = None
        self._expires = 0.0

    async def average(self, db: Database) -> float | None:
        now = time.monotonic()
        if now >= self._expires:
            self._expires = now + self.TTL_SECONDS
            try:
                runs = await db.read_all(_RECENT_RUNS, {"sample": self.SAMPLE})
            except BaseException:
                self._expires = 0.0
                raise
            durations = [
                (run["finished_at"] - run["started_at"]).total_seconds()
                for run in runs
                if run["started_at"] is not None and run["finished_at"] is not None
            ]
            self._average = sum(durations) / len(durations) if durations else None
        return self._average


async def progress_estimate(db: Database, task: Row, recent: RecentDurations) -> dict[str, Any]:
    """For an unfinished task read by `get_task`: its place in the queue (the
    pending tasks before it in the claim order, `imagine.queue.fairness`; other
    accounts' later tasks may still be placed before it) and a rough time to
    completion from how long recent tasks took."""
    average = await recent.average(db)
    if task["status"] == PROCESSING:
        eta = None if average is None else average * (100 - task["progress"]) / 100
        return {"queue_position": 0, "eta_seconds": _rounded(eta)}
    position = int(task["queue_ahead"]) + 1
    slots = max(1, int(task["queue_running"]))
    eta = None if average is None else average * (position / slots + 1)
    return {"queue_position": position, "eta_seconds": _rounded(eta)}


def _rounded(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds))
