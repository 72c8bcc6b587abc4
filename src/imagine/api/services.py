"""Everything a request handler needs, built once per app by `create_app`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Request

from imagine.accounts.service import Principal
from imagine.api.ratelimit import RateLimiter
from imagine.db.database import Database
from imagine.engines.base import Engine
from imagine.moderation.moderator import Moderator
from imagine.settings import Settings
from imagine.storage.base import Storage
from imagine.tasks.inputs import InputStore
from imagine.tasks.service import RecentDurations, SubmitPolicy
from imagine.webhooks.sealing import SecretBox


@dataclass
class Services:
    settings: Settings
    db: Database
    storage: Storage
    engine: Engine
    test_engine: Engine
    limiter: RateLimiter
    inputs: InputStore
    webhook_secrets: SecretBox
    moderator: Moderator | None = None
    """The content policy the workers apply (None: moderation is off)."""
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    recent_durations: RecentDurations = field(default_factory=RecentDurations)

    def engine_for(self, caller: Principal) -> Engine:
        return self.test_engine if caller.is_test else self.engine

    def submit_policy(self, caller: Principal) -> SubmitPolicy:
        """What a submit costs, where it runs and how far it moves the account's place
        in the queue; test keys pay nothing."""
        engine = self.engine_for(caller)
        return SubmitPolicy(
            cost=0 if caller.is_test else self.settings.cost_for(engine.name),
            engine=engine.name,
            max_attempts=self.settings.max_attempts,
            idempotency_ttl=timedelta(seconds=self.settings.idempotency_ttl_seconds),
            queue_quantum=self.settings.queue_quantum_for(caller.plan),
            account_input_bytes=self.settings.account_input_bytes,
        )

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url)


async def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    """Set by `V1Gate` before any `/v1` route runs."""
    return request.state.principal  # type: ignore[no-any-return]
