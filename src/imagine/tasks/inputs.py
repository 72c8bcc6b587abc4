"""A task's `data:` images, kept in storage rather than in its row.

The row is read on every status poll and listing, so it keeps only a reference
and what the owner is shown (`StoredImage`). The bytes are written before the
submit's transaction (in a thread, off the event loop) under
`inputs/<task id>/`, removed again when the submit does not create that task,
and removed after the transaction that ends the task. A sweep is the safety
net for what a crash leaves behind: files older than the retention whose task
ended or never existed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import replace

from sqlalchemy import select

from imagine.db.database import Database
from imagine.db.models import Task
from imagine.failures import FailureReason, TaskFailure
from imagine.periodic import Periodic
from imagine.storage.base import INPUTS_PREFIX, Storage
from imagine.tasks.schemas import GenerationRequest, StoredImage, summarise_data_url

log = logging.getLogger("imagine.inputs")

_MAX_SWEEP_INTERVAL = 600.0
_SWEEP_BATCH = 500  # task ids per query, well under every database's parameter limit


class InputStore:
    """Tasks' input images in `storage`, under `inputs/<task id>/`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def save(self, task_id: str, request: GenerationRequest) -> GenerationRequest:
        """`request` with its uploads in storage, each replaced by a `StoredImage`.
        On failure nothing written stays."""
        return await asyncio.to_thread(self._save, task_id, request)

    def _save(self, task_id: str, request: GenerationRequest) -> GenerationRequest:
        images = list(request.images)
        written: list[StoredImage] = []
        try:
            for index, data in request.uploads.items():
                # A random part: the key is unguessable even where the bucket is public.
                name = f"{INPUTS_PREFIX}{task_id}/{index}-{secrets.token_urlsafe(9)}"
                url = images[index]
                assert isinstance(url, str)
                stored = StoredImage(self.storage.put(name, data), summarise_data_url(url))
                written.append(stored)
                images[index] = stored
        except BaseException:
            self._delete([image.key for image in written])
            raise
        return replace(request, images=tuple(images), uploads={})

    async def read(self, image: StoredImage) -> bytes:
        try:
            return await asyncio.to_thread(self.storage.read, image.key)
        except FileNotFoundError:
            raise TaskFailure(
                FailureReason.BUILD_FAILED,
                f"input image {image.key} is missing from storage",
                retryable=False,
            ) from None

    async def discard(self, images: Iterable[StoredImage]) -> None:
        """Delete these inputs; a failure is logged and left to the sweep."""
        keys = [image.key for image in images]
        if keys:
            await asyncio.to_thread(self._delete, keys)

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.storage.delete(key)
            except Exception:
                log.exception("could not delete input %s; the sweep will retry", key)

    async def sweep(self, db: Database, retention: float) -> int:
        """Delete inputs older than `retention` seconds whose task holds none any
        more (ended) or does not exist (its submit never committed); returns how many."""
        cutoff = time.time() - retention
        entries = await asyncio.to_thread(self.storage.entries, INPUTS_PREFIX)
        newest: dict[str, float] = {}
        keys: dict[str, list[str]] = {}
        for key, written in entries:
            task_id = key.rsplit("/", 2)[-2]
            newest[task_id] = max(written, newest.get(task_id, written))
            keys.setdefault(task_id, []).append(key)
        old = [task_id for task_id, written in newest.items() if written < cutoff]
        if not old:
            return 0
        holding = await _tasks_holding_inputs(db, old)
        doomed = [key for task_id in old if task_id not in holding for key in keys[task_id]]
        if doomed:
            await asyncio.to_thread(self._delete, doomed)
            log.info("swept %d input images left behind", len(doomed))
        return len(doomed)


async def _tasks_holding_inputs(db: Database, task_ids: list[str]) -> set[str]:
    """Those of `task_ids` that exist and have not ended (ending zeroes `input_bytes`)."""
    holding: set[str] = set()
    async with db.read() as session:
        for start in range(0, len(task_ids), _SWEEP_BATCH):
            batch = task_ids[start : start + _SWEEP_BATCH]
            found = await session.scalars(
                select(Task.id).where(Task.id.in_(batch), Task.input_bytes > 0)
            )
            holding.update(found)
    return holding


class InputSweeper(Periodic):
    """Runs `InputStore.sweep` at start and then every `interval` seconds, in
    every process that runs workers (several sweeping at once is harmless)."""

    name = "sweeping stored input images"

    def __init__(self, db: Database, inputs: InputStore, retention: float) -> None:
        super().__init__(min(retention / 2, _MAX_SWEEP_INTERVAL))
        self.db = db
        self.inputs = inputs
        self.retention = retention

    async def tick(self) -> None:
        await self.inputs.sweep(self.db, self.retention)
