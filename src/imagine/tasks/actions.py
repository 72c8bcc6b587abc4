"""What a caller does with tasks, as the HTTP API, the web console and the
compatible faces (`imagine.compat`) all do it: submit one (validated for the
caller's engine, charged, enqueued, a worker woken) and see one as its owner
does, with its place in the queue; and the checks of what a client may add to
a submit (an idempotency key, a test key's forced outcome)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import timedelta
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
from imagine.failures import TEST_OUTCOMES
from imagine.ids import new_id
from imagine.observability import logs, tracing
from imagine.observability.metrics import CREDITS_DEBITED, TASKS_SUBMITTED
from imagine.tasks import service
from imagine.tasks.schemas import GenerateBody, validate_generation
from imagine.tasks.states import PENDING, PROCESSING
from imagine.webhooks.service import require_signing_secret

TEST_OUTCOME_NAMES = ("completed", *TEST_OUTCOMES)
TEST_OUTCOME_MARKER = re.compile(r"\[imagine-test-outcome=([a-z-]+)\]")
"""`[imagine-test-outcome=network]` in a test key's prompt forces that outcome, for
clients that cannot send the `Imagine-Test-Outcome` header (xai-sdk, openai)."""


def checked_idempotency_key(value: str | None) -> str | None:
    """An `Idempotency-Key` header as a submit takes it."""
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest("The Idempotency-Key header must be 1-255 printable characters")
    return value


def checked_test_outcome(value: str | None, caller: Principal) -> str | None:
    """An `Imagine-Test-Outcome` header (or gRPC metadata) as a submit takes it."""
    if value is None:
        return None
    if not caller.is_test:
        raise InvalidRequest("The Imagine-Test-Outcome header is only accepted from test keys")
    if value not in TEST_OUTCOME_NAMES:
        raise InvalidRequest(
            f"The Imagine-Test-Outcome header must be one of: {', '.join(TEST_OUTCOME_NAMES)}"
        )
    return None if value == "completed" else value


def outcome_in_prompt(prompt: str, caller: Principal) -> str | None:
    """The outcome a test key's prompt asks for with `TEST_OUTCOME_MARKER`; a live
    key's prompt is only a prompt, and an unknown name is refused."""
    found = TEST_OUTCOME_MARKER.search(prompt) if caller.is_test else None
    if found is None:
        return None
    if found[1] not in TEST_OUTCOME_NAMES:
        raise InvalidRequest(
            f"The prompt's test outcome must be one of: {', '.join(TEST_OUTCOME_NAMES)}"
        )
    return None if found[1] == "completed" else found[1]


async def submit_generation(
    svc: Services,
    caller: Principal,
    body: GenerateBody,
    *,
    idempotency_key: str | None = None,
    test_outcome: str | None = None,
    replay_window: timedelta | None = None,
) -> str:
    """Validate, charge and enqueue one generation; returns its task id.

    A test key's outcome comes from `test_outcome` (already checked) or else from
    a marker in its prompt. `replay_window` narrows how long an `idempotency_key`
    returns its first task (default: the configured retention); zero always
    makes a new task and takes the key over (see `imagine.compat.xai_grpc`).
    """
    engine = svc.engine_for(caller)
    try:
        request = validate_generation(body, svc.settings, engine.capabilities)
        if request.callback_url is not None:
            await require_signing_secret(svc.db, caller.account_id)
        policy = svc.submit_policy(caller)
        if replay_window is not None:
            policy = dataclasses.replace(policy, idempotency_ttl=replay_window)
        fresh_id = new_id("task")
        task_id = await service.submit(
            svc.db,
            caller,
            request,
            policy,
            idempotency_key,
            test_outcome or outcome_in_prompt(request.prompt, caller),
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


async def submit_with_headers(
    svc: Services,
    caller: Principal,
    body: GenerateBody,
    idempotency_key: str | None,
    test_outcome: str | None,
) -> str:
    """`submit_generation` with the client's `Idempotency-Key` and
    `Imagine-Test-Outcome` headers, checked: what every HTTP submit does."""
    return await submit_generation(
        svc,
        caller,
        body,
        idempotency_key=checked_idempotency_key(idempotency_key),
        test_outcome=checked_test_outcome(test_outcome, caller),
    )


async def task_view(svc: Services, task: Row, base_url: Callable[[], str]) -> dict[str, Any]:
    """A task's `data` as status and cancel show it. `base_url` is asked only
    when there are file URLs to build."""
    view = service.status_view(task, lambda key: svc.storage.url(key, base_url()))
    if task["status"] in (PENDING, PROCESSING):
        view.update(await service.progress_estimate(svc.db, task, svc.recent_durations))
    return view
