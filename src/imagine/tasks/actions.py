"""What a caller does with tasks, as the HTTP API and the web console both do it:
submit one (validated for the caller's engine, charged, enqueued, a worker
woken) and see one as its owner does, with its place in the queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagine.accounts.service import Principal
from imagine.api.services import Services
from imagine.db.prepared import Row
from imagine.errors import (
    Conflict,
    InsufficientCredits,
    InvalidRequest,
    RateLimited,
)
from imagine.ids import new_id
from imagine.observability import logs, tracing
from imagine.observability.metrics import CREDITS_DEBITED, TASKS_SUBMITTED
from imagine.tasks import service
from imagine.tasks.schemas import GenerateBody, validate_generation
from imagine.tasks.states import PENDING, PROCESSING
from imagine.webhooks.service import require_signing_secret


async def submit_generation(
    svc: Services,
    caller: Principal,
    body: GenerateBody,
    *,
    idempotency_key: str | None = None,
    test_outcome: str | None = None,
) -> str:
    """Validate, charge and enqueue one generation; returns its task id."""
    engine = svc.engine_for(caller)
    try:
        request = validate_generation(body, svc.settings, engine.capabilities)
        if request.callback_url is not None:
            await require_signing_secret(svc.db, caller.account_id)
        policy = svc.submit_policy(caller)
        fresh_id = new_id("task")
        task_id = await service.submit(
            svc.db,
            caller,
            request,
            policy,
            idempotency_key,
            test_outcome,
            svc.inputs,
            task_id=fresh_id,
            traceparent=tracing.traceparent(),
        )
    except (InvalidRequest, InsufficientCredits, RateLimited, Conflict) as refusal:
        TASKS_SUBMITTED.labels(engine.name, _refusal(refusal)).inc()
        raise
    svc.wakeup.set()
    logs.bind(task_id=task_id)
    if task_id == fresh_id:
        TASKS_SUBMITTED.labels(engine.name, "accepted").inc()
        if policy.cost:
            CREDITS_DEBITED.labels(engine.name).inc(policy.cost)
    else:
        TASKS_SUBMITTED.labels(engine.name, "replayed").inc()
    return task_id


def _refusal(error: Exception) -> str:
    """How a refused submit is counted in `imagine_tasks_submitted_total`."""
    if isinstance(error, InsufficientCredits):
        return "no_credits"
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, Conflict):
        return "conflict"
    return "invalid"


async def task_view(svc: Services, task: Row, base_url: Callable[[], str]) -> dict[str, Any]:
    """A task's `data` as status and cancel show it. `base_url` is asked only
    when there are file URLs to build."""
    view = service.status_view(task, lambda key: svc.storage.url(key, base_url()))
    if task["status"] in (PENDING, PROCESSING):
        view.update(await service.progress_estimate(svc.db, task, svc.recent_durations))
    return view
