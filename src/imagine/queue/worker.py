"""A worker: claims tasks, runs the engine, stores the result, ends the task.

Runs inside `imagine serve` (N of them) or alone as `imagine worker`. While an
engine runs, a heartbeat extends the lease and records progress; if the lease
is lost (another worker took the task over), the engine is told to stop and
its result is discarded. On shutdown, in-flight tasks get a grace period to
finish and are otherwise handed back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagine.db.database import Database
from imagine.engines.base import Engine, GenerationJob, JobControl
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.media.fetch import ImageFetcher
from imagine.queue import repository as queue
from imagine.queue.repository import ClaimedTask
from imagine.storage.base import Storage

log = logging.getLogger("imagine.worker")

PROGRESS_WRITE_INTERVAL = 1.0


@dataclass(frozen=True)
class WorkerConfig:
    lease_seconds: float
    heartbeat_seconds: float
    poll_interval: float
    task_timeout: float
    retry_delay: float = 2.0
    shutdown_grace: float = 10.0


class Worker:
    def __init__(
        self,
        db: Database,
        engine: Engine,
        storage: Storage,
        fetcher: ImageFetcher,
        config: WorkerConfig,
        workdir: Path,
        wakeup: asyncio.Event | None = None,
        name: str | None = None,
    ) -> None:
        self.db = db
        self.engine = engine
        self.storage = storage
        self.fetcher = fetcher
        self.config = config
        self.workdir = workdir
        self.wakeup = wakeup or asyncio.Event()
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._stopping = asyncio.Event()
        self._current: JobControl | None = None

    def stop(self) -> None:
        self._stopping.set()
        self.wakeup.set()

    async def run(self) -> None:
        """Claim and process tasks until `stop()`."""
        while not self._stopping.is_set():
            try:
                await queue.recover_expired(self.db)
                claimed = await queue.claim(self.db, self.name, self.config.lease_seconds)
            except Exception:
                log.exception("%s: queue access failed", self.name)
                claimed = None
            if claimed is None:
                await self._idle()
                continue
            await self.process(claimed)

    async def _idle(self) -> None:
        self.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), self.config.poll_interval)

    async def process(self, claimed: ClaimedTask) -> None:
        control = JobControl()
        progress = _Progress()
        control.on_progress = progress.update
        self._current = control
        job_task = asyncio.create_task(self._execute(claimed, control))
        beat = asyncio.create_task(self._heartbeat(claimed, control, progress))
        stop_wait = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({job_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not job_task.done():
                # Shutting down: let the task finish within the grace period.
                done, _ = await asyncio.wait({job_task}, timeout=self.config.shutdown_grace)
                if not done:
                    control.cancel_event.set()
                    await asyncio.wait({job_task})
            await job_task
        finally:
            stop_wait.cancel()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self._current = None

    async def _heartbeat(
        self, claimed: ClaimedTask, control: JobControl, progress: _Progress
    ) -> None:
        written = 0
        since_lease = 0.0
        tick = min(PROGRESS_WRITE_INTERVAL, self.config.heartbeat_seconds)
        while True:
            await asyncio.sleep(tick)
            since_lease += tick
            percent = progress.percent
            if percent == written and since_lease < self.config.heartbeat_seconds:
                continue
            try:
                alive = await queue.heartbeat(self.db, claimed, self.config.lease_seconds, percent)
            except Exception:
                log.exception("%s: heartbeat failed for %s", self.name, claimed.task_id)
                continue
            written, since_lease = percent, 0.0
            if not alive:
                log.warning("%s: lost the lease on %s; stopping it", self.name, claimed.task_id)
                control.cancel_event.set()
                return

    async def _execute(self, claimed: ClaimedTask, control: JobControl) -> None:
        task_id = claimed.task_id
        workdir = Path(tempfile.mkdtemp(prefix=f"{task_id}-", dir=self.workdir))
        try:
            paths = await asyncio.wait_for(
                self._generate(claimed, control, workdir), self.config.task_timeout
            )
            keys = [await asyncio.to_thread(self.storage.save, task_id, path) for path in paths]
            if await queue.complete(self.db, claimed, keys):
                log.info("%s: %s completed (attempt %d)", self.name, task_id, claimed.attempt)
            else:
                log.warning("%s: result of %s discarded: lease lost", self.name, task_id)
                for key in keys:
                    await asyncio.to_thread(self.storage.delete, key)
        except Cancelled:
            if self._stopping.is_set() and await queue.release(self.db, claimed):
                log.info("%s: %s handed back to the queue at shutdown", self.name, task_id)
        except TaskFailure as failure:
            await self._fail(claimed, failure.reason, failure.detail, failure.retryable)
        except TimeoutError:
            control.cancel_event.set()
            await self._fail(
                claimed, FailureReason.BUILD_FAILED, "task time limit exceeded", retryable=False
            )
        except Exception as exc:
            log.exception("%s: %s crashed", self.name, task_id)
            await self._fail(claimed, FailureReason.BUILD_FAILED, repr(exc), retryable=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def _generate(
        self, claimed: ClaimedTask, control: JobControl, workdir: Path
    ) -> list[Path]:
        request = claimed.request
        images = await self.fetcher.fetch_all(request.images) if request.images else []
        width, height = request.size
        job = GenerationJob(
            task_id=claimed.task_id,
            prompt=request.prompt,
            mode=request.mode,
            ratio=request.ratio,
            resolution=request.resolution,
            width=width,
            height=height,
            duration=request.duration,
            seed=request.seed,
            images=tuple(images),
        )
        return await self.engine.generate(job, workdir, control)

    async def _fail(
        self, claimed: ClaimedTask, reason: FailureReason, detail: str, retryable: bool
    ) -> None:
        retry_after = self.config.retry_delay * 2 ** (claimed.attempt - 1) if retryable else None
        outcome = await queue.fail(self.db, claimed, reason, detail, retry_after=retry_after)
        log.warning(
            "%s: %s attempt %d failed (%s): %s -> %s",
            self.name,
            claimed.task_id,
            claimed.attempt,
            reason.value,
            detail,
            outcome or "lease lost",
        )


class _Progress:
    """Progress reported by an engine thread, read by the heartbeat loop."""

    def __init__(self) -> None:
        self.percent = 0

    def update(self, fraction: float) -> None:
        self.percent = max(self.percent, min(99, int(fraction * 100)))
