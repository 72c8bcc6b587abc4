"""The tables. The `tasks` table is also the queue (see `imagine.queue`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    plan: Mapped[str] = mapped_column(String(20))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The account's clocks in the fair claim order (imagine.queue.fairness): the
    # `fair_at` of its latest live and test task, in epoch seconds; 0 until then.
    fair_at: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")
    test_fair_at: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    is_test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Opens `/v1/admin/`. A property of one key, not of its account, so the
    # account's other keys (the ones its apps use) hold no operator power.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # To the minute at best: written at most once a minute per key, off the
    # request's path (imagine.accounts.service.KeyCache).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ConsoleSession(Base):
    """A signed-in browser of the web console (imagine.console.sessions).

    Holds the SHA-256 of the cookie's random token, never the token or the API
    key, so a copy of the database opens no session. The key is joined on
    every request: revoking it ends its sessions at once."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LedgerEntry(Base):
    """Append-only record of every balance change; `balance_after` makes audits local."""

    __tablename__ = "ledger"
    __table_args__ = (
        # One debit and at most one refund per task, whatever retries happen.
        UniqueConstraint("task_id", "kind", name="uq_ledger_task_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # grant | debit | refund
    amount: Mapped[int] = mapped_column(BigInteger)  # signed
    balance_after: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # The claim order (imagine.queue.fairness), so a claim reads one entry.
        Index("ix_tasks_queue", "status", "is_test", "fair_at", "id"),
        Index("ix_tasks_lease", "status", "lease_expires_at"),
        Index("ix_tasks_listing", "account_id", "is_test", "created_at", "id"),
        Index("ix_tasks_finished", "status", "finished_at"),
        # Only tasks that hold input images in storage (ending a task zeroes the
        # count), so the per-account sum at an image submit reads a handful of
        # rows, and a submit without images adds nothing to maintain.
        Index(
            "ix_tasks_held_inputs",
            "account_id",
            sqlite_where=text("input_bytes > 0"),
            postgresql_where=text("input_bytes > 0"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(12))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost: Mapped[int] = mapped_column(BigInteger)
    consumed_credits: Mapped[int] = mapped_column(BigInteger)
    engine: Mapped[str] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    outputs: Mapped[list[str]] = mapped_column(JSON, default=list)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())  # not claimed before
    # Its place in the claim order (epoch seconds of virtual time), set at submit
    # and kept through retries; see imagine.queue.fairness. The server default
    # only fills rows that are never claimed again (finished before 0005).
    fair_at: Mapped[float] = mapped_column(Double, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    is_test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    test_outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Saved by the engine (JobControl.checkpoint) so a later attempt resumes paid
    # upstream work instead of starting it again.
    engine_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Bytes of this task's data: images in storage (`imagine.tasks.inputs`);
    # 0 once it ends, when they are deleted.
    input_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Deleted by its owner (tasks.service.delete_task): no face shows it again.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # W3C trace context of the submitting request (only when tracing is on), so
    # the worker's span of the task joins that trace.
    traceparent: Mapped[str | None] = mapped_column(String(64), nullable=True)


class WorkerProcess(Base):
    """A process running workers (`imagine worker`, or `imagine serve` with
    in-process ones), heart-beating so any API process can tell how many
    workers are alive per engine (imagine.queue.presence)."""

    __tablename__ = "worker_processes"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    engines: Mapped[list[str]] = mapped_column(JSON)
    slots: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class WebhookEvent(Base):
    """The outbox: a task's end, to be delivered to its `callback_url`.

    Written in the same transaction that ends the task, so an ended task with
    a callback always has its event, even if the process dies right after.
    The id is the stable `webhook-id` across retries.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_due", "status", "next_attempt_at"),
        Index("ix_webhook_events_account", "account_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    event_type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12))  # pending | delivering | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookAttempt(Base):
    """One try at delivering a `WebhookEvent`: what the receiver answered, or why not."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)


class IdempotencyRecord(Base):
    """An `Idempotency-Key` seen from an account, bound to the request it first came with."""

    __tablename__ = "idempotency_keys"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ModerationRefusal(Base):
    """Content the policy refused (imagine.moderation): the task, where and why.

    Written in the transaction that fails the task, so every refused task has
    its record. Only operators see it; the client sees the contract's sentence.
    An operator may mark it a false positive, which only records the judgement
    (for tuning the policy); the task stays failed."""

    __tablename__ = "moderation_refusals"
    __table_args__ = (Index("ix_moderation_refusals_listing", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    is_test: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[str] = mapped_column(String(20))
    engine: Mapped[str] = mapped_column(String(40))
    stage: Mapped[str] = mapped_column(String(10))  # input | output | engine
    check_name: Mapped[str] = mapped_column(String(30))
    subject: Mapped[str] = mapped_column(String(100))
    rule: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Double, nullable=True)
    false_positive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    review_note: Mapped[str] = mapped_column(String(500), default="", server_default="")
