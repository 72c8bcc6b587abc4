"""What the API returns, as typed, immutable values (plain dataclasses: no pydantic needed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from imagine.client._exceptions import UnexpectedResponse, int_header

PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "processing",
    "completed",
    "failed",
    "cancelled",
)
_FAILED = frozenset({FAILED, CANCELLED})


@dataclass(frozen=True)
class RateLimit:
    """The account's per-minute budget (shared by its keys), as of the answer it came with."""

    limit: int
    remaining: int
    reset_at: datetime  # when the window has room again (UTC)

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit | None:
        limit = int_header(headers, "x-ratelimit-limit")
        remaining = int_header(headers, "x-ratelimit-remaining")
        reset = int_header(headers, "x-ratelimit-reset")
        if limit is None or remaining is None or reset is None:
            return None
        return cls(limit, remaining, datetime.fromtimestamp(reset, UTC))


@dataclass(frozen=True)
class Task:
    """One generation task, as `GET /v1/status` described it.

    Fields the server adds later are kept in `extra` rather than dropped, so an
    older SDK still shows everything a newer server says.
    """

    task_id: str
    status: str  # pending | processing | completed | failed | cancelled
    consumed_credits: int
    created_at: datetime
    error_message: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    response: list[str] = field(default_factory=list)  # video URLs once completed
    progress: int | None = None  # 0-100
    updated_at: datetime | None = None
    engine: str | None = None
    cancel_requested: bool = False  # a cancel is on its way to the worker running it
    test: bool = False  # made with a test key: free, preview engine only
    queue_position: int | None = None  # unfinished tasks: 1 = next to run, 0 = running
    eta_seconds: int | None = None  # unfinished tasks: rough time to completion, if known
    extra: dict[str, Any] = field(default_factory=dict)
    rate_limit: RateLimit | None = field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        """True once the task will not change any more."""
        return self.status == COMPLETED or self.status in _FAILED

    @property
    def succeeded(self) -> bool:
        return self.status == COMPLETED

    @property
    def failed(self) -> bool:
        """Failed or cancelled (and refunded)."""
        return self.status in _FAILED

    def to_dict(self) -> dict[str, Any]:
        """The status `data` object as JSON-ready values (timestamps in ISO 8601, UTC).

        `queue_position` and `eta_seconds` are included only while the task is
        unfinished, as the server does.
        """
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "status": self.status,
            "consumed_credits": self.consumed_credits,
            "created_at": _iso(self.created_at),
            "error_message": self.error_message,
            "request": self.request,
            "response": list(self.response),
            "progress": self.progress,
            "updated_at": _iso(self.updated_at) if self.updated_at else None,
            "engine": self.engine,
            "cancel_requested": self.cancel_requested,
            "test": self.test,
        }
        if not self.finished:
            data["queue_position"] = self.queue_position
            data["eta_seconds"] = self.eta_seconds
        return {**data, **self.extra}

    @classmethod
    def from_data(cls, data: dict[str, Any], rate_limit: RateLimit | None = None) -> Task:
        """Parse the status `data`; a missing or mistyped contract field is an error."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "rate_limit")}
        with _parsing("task"):
            progress = data.get("progress")
            updated_at = data.get("updated_at")
            eta = data.get("eta_seconds")
            return cls(
                task_id=_typed(data["task_id"], str),
                status=_typed(data["status"], str),
                consumed_credits=_typed(data["consumed_credits"], int),
                created_at=_timestamp(data["created_at"]),
                error_message=_typed(data.get("error_message"), str, optional=True),
                request=_typed(data.get("request") or {}, dict),
                response=[_typed(url, str) for url in _typed(data.get("response") or [], list)],
                progress=int(progress) if isinstance(progress, int | float) else None,
                updated_at=_timestamp(updated_at) if updated_at else None,
                engine=_typed(data.get("engine"), str, optional=True),
                cancel_requested=_typed(data.get("cancel_requested", False), bool),
                test=_typed(data.get("test", False), bool),
                queue_position=_typed(data.get("queue_position"), int, optional=True),
                eta_seconds=round(eta) if isinstance(eta, int | float) else None,
                extra={k: v for k, v in data.items() if k not in known},
                rate_limit=rate_limit,
            )


@dataclass(frozen=True)
class TaskPage:
    """One page of `GET /v1/tasks`, newest first.

    Pass `next_after` back as `after` for the next page; it is None on the last.
    """

    tasks: list[Task]
    has_more: bool
    next_after: str | None
    rate_limit: RateLimit | None = field(default=None, compare=False)

    @classmethod
    def from_data(cls, data: dict[str, Any], rate_limit: RateLimit | None = None) -> TaskPage:
        with _parsing("task list"):
            tasks = [Task.from_data(_typed(item, dict)) for item in _typed(data["tasks"], list)]
            return cls(
                tasks=tasks,
                has_more=_typed(data["has_more"], bool),
                next_after=_typed(data.get("next_after"), str, optional=True),
                rate_limit=rate_limit,
            )


@dataclass(frozen=True)
class Usage:
    """What an account did over one window (`24h` or `30d`)."""

    credits_spent: int  # after refunds
    tasks: dict[str, int]  # by status: pending, processing, completed, failed, cancelled

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Usage:
        tasks = _typed(data["tasks"], dict)
        return cls(
            credits_spent=_typed(data["credits_spent"], int),
            tasks={_typed(name, str): _typed(count, int) for name, count in tasks.items()},
        )


@dataclass(frozen=True)
class Account:
    """The key's account, as `GET /v1/account` described it.

    `usage` is keyed by window, `"24h"` and `"30d"`. `rate_limit` is this key's
    per-minute budget after this request. Fields a newer server adds are kept
    in `extra`.
    """

    account_id: str
    plan: str  # free | pro | enterprise
    balance: int  # credits
    test: bool  # a test key: its tasks are free and counted apart from live ones
    usage: dict[str, Usage]
    rate_limit: RateLimit | None = field(default=None, compare=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The `data` object as JSON-ready values."""
        limit = self.rate_limit
        return {
            "account_id": self.account_id,
            "plan": self.plan,
            "balance": self.balance,
            "test": self.test,
            "usage": {
                window: {"credits_spent": used.credits_spent, "tasks": dict(used.tasks)}
                for window, used in self.usage.items()
            },
            "rate_limit": None
            if limit is None
            else {
                "limit": limit.limit,
                "remaining": limit.remaining,
                "reset": int(limit.reset_at.timestamp()),
            },
            **self.extra,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any], rate_limit: RateLimit | None = None) -> Account:
        """Parse the account `data`; its own `rate_limit` wins over the headers' one."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        with _parsing("account"):
            said = _typed(data.get("rate_limit"), dict, optional=True)
            if said is not None:
                rate_limit = RateLimit(
                    limit=_typed(said["limit"], int),
                    remaining=_typed(said["remaining"], int),
                    reset_at=datetime.fromtimestamp(_typed(said["reset"], int), UTC),
                )
            usage = _typed(data["usage"], dict)
            return cls(
                account_id=_typed(data["account_id"], str),
                plan=_typed(data["plan"], str),
                balance=_typed(data["balance"], int),
                test=_typed(data.get("test", False), bool),
                usage={
                    _typed(window, str): Usage.from_data(_typed(used, dict))
                    for window, used in usage.items()
                },
                rate_limit=rate_limit,
                extra={k: v for k, v in data.items() if k not in known},
            )


@dataclass(frozen=True)
class LedgerEntry:
    """One change to the balance: a `grant`, a `debit` (a task's cost) or a `refund`."""

    id: int
    kind: str  # grant | debit | refund
    amount: int  # signed: a debit is negative
    balance_after: int
    task_id: str | None
    note: str | None
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> LedgerEntry:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            id=_typed(data["id"], int),
            kind=_typed(data["kind"], str),
            amount=_typed(data["amount"], int),
            balance_after=_typed(data["balance_after"], int),
            task_id=_typed(data.get("task_id"), str, optional=True),
            note=_typed(data.get("note"), str, optional=True),
            created_at=_timestamp(data["created_at"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class LedgerPage:
    """One page of `GET /v1/account/ledger`, newest first.

    Pass `next_after` back as `after` for the next page; it is None on the last.
    """

    entries: list[LedgerEntry]
    has_more: bool
    next_after: int | None
    rate_limit: RateLimit | None = field(default=None, compare=False)

    @classmethod
    def from_data(cls, data: dict[str, Any], rate_limit: RateLimit | None = None) -> LedgerPage:
        with _parsing("ledger"):
            entries = _typed(data["entries"], list)
            return cls(
                entries=[LedgerEntry.from_data(_typed(entry, dict)) for entry in entries],
                has_more=_typed(data["has_more"], bool),
                next_after=_typed(data.get("next_after"), int, optional=True),
                rate_limit=rate_limit,
            )


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try at delivering a webhook: the receiver's HTTP status, or why there was none."""

    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> DeliveryAttempt:
        return cls(
            attempted_at=_timestamp(data["attempted_at"]),
            status_code=_typed(data.get("status_code"), int, optional=True),
            error=_typed(data.get("error"), str, optional=True),
            duration_ms=_typed(data["duration_ms"], int),
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One webhook message sent for a task, and every attempt to deliver it."""

    webhook_id: str  # the `webhook-id` header the receiver saw
    type: str  # task.completed | task.failed | task.cancelled
    status: str  # pending | delivering | delivered | failed
    attempt_count: int
    created_at: datetime
    next_attempt_at: datetime | None  # while pending: when the next try is due
    delivered_at: datetime | None
    attempts: list[DeliveryAttempt]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> WebhookDelivery:
        next_at, delivered_at = data.get("next_attempt_at"), data.get("delivered_at")
        return cls(
            webhook_id=_typed(data["webhook_id"], str),
            type=_typed(data["type"], str),
            status=_typed(data["status"], str),
            attempt_count=_typed(data["attempt_count"], int),
            created_at=_timestamp(data["created_at"]),
            next_attempt_at=_timestamp(next_at) if next_at is not None else None,
            delivered_at=_timestamp(delivered_at) if delivered_at is not None else None,
            attempts=[
                DeliveryAttempt.from_data(_typed(item, dict))
                for item in _typed(data.get("attempts") or [], list)
            ],
        )


@dataclass(frozen=True)
class TaskDeliveries:
    """`GET /v1/tasks/{task_id}/deliveries`: the task's `callback_url` and its webhooks."""

    task_id: str
    callback_url: str | None
    deliveries: list[WebhookDelivery]

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TaskDeliveries:
        with _parsing("delivery history"):
            return cls(
                task_id=_typed(data["task_id"], str),
                callback_url=_typed(data.get("callback_url"), str, optional=True),
                deliveries=[
                    WebhookDelivery.from_data(_typed(item, dict))
                    for item in _typed(data.get("deliveries") or [], list)
                ],
            )


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """A missing or mistyped contract field means this is not the API we know."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        raise UnexpectedResponse(
            f"The {what} in the answer is not what the API describes ({exc!r})", status=200
        ) from None


def _typed(value: Any, kind: type[Any], *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


def _timestamp(value: Any) -> datetime:
    moment = datetime.fromisoformat(_typed(value, str))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
