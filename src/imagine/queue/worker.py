"""A worker: claims tasks, moderates them, runs the engine, stores the result,
ends the task.

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
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from imagine.db.database import Database
from imagine.db.unavailable import database_unavailable, log_failure
from imagine.engines.base import Engine, GenerationJob, JobControl
from imagine.failures import TEST_OUTCOMES, Cancelled, FailureReason, TaskFailure
from imagine.media.fetch import ImageFetcher, gather_or_cancel, inspect_images
from imagine.media.images import InputImage
from imagine.moderation.moderator import ContentRefused, Moderator, Refusal
from imagine.observability import logs, metrics, tracing
from imagine.observability.metrics import LEASE_LOST, RUN_DURATION, STAGE_DURATION
from imagine.queue import repository as queue
from imagine.queue.memory import release_freed_memory
from imagine.queue.repository import ClaimedTask
from imagine.storage.base import Storage
from imagine.tasks.inputs import InputStore
from imagine.tasks.schemas import GenerationRequest, StoredImage
from imagine.tasks.states import CANCELLED, COMPLETED, FAILED, PENDING

log = logging.getLogger("imagine.worker")

PROGRESS_WRITE_INTERVAL = 1.0
# Input images keep at least this many times the frame's longer side on their
# shorter side: room for the preview's pan and zoom and for engines that crop,
# while a 50-megapixel photo shrinks to a few megapixels before any engine sees it.
INPUT_HEADROOM = 2
# An ending that finds the database unreachable is written again after these
# pauses (doubling), until it is back.
SETTLE_FIRST_DELAY = 0.2
SETTLE_MAX_DELAY = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerConfig:
    lease_seconds: float
    heartbeat_seconds: float
    poll_interval: float
    task_timeout: float
    retry_delay: float = 2.0
    shutdown_grace: float = 10.0
    image_max_pixels: int = 50_000_000
    task_max_pixels: int | None = None


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
        extra_engines: Mapping[str, Engine] | None = None,
        moderator: Moderator | None = None,
    ) -> None:
        self.db = db
        self.engine = engine
        # Tasks name the engine they were submitted for (test keys' tasks: preview).
        self.engines = {**(extra_engines or {}), engine.name: engine}
        self.storage = storage
        self.inputs = InputStore(storage)
        self.fetcher = fetcher
        self.moderator = moderator
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
            # Cleared before looking, not after: a submit that commits while the
            # claim is in flight finds the event set and the wait ends at once.
            self.wakeup.clear()
            try:
                await queue.recover_expired(self.db)
                claimed = await queue.claim(self.db, self.name, self.config.lease_seconds)
            except Exception:
                log_failure(log, "%s: queue access failed", self.name)
                claimed = None
            if claimed is None:
                await self._idle()
                continue
            try:
                await self.process(claimed)
            except Exception:  # the loop outlives any one task; its lease recovers it
                log.exception("%s: processing %s stopped", self.name, claimed.task_id)
            # A few milliseconds on glibc: off the event loop, which may be the API's.
            await asyncio.to_thread(release_freed_memory)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), self.config.poll_interval)

    async def process(self, claimed: ClaimedTask) -> None:
        """Run one claimed task to its end, with its log context and trace span."""
        engine = claimed.engine or self.engine.name
        context = logs.start(
            task_id=claimed.task_id,
            account_id=claimed.account_id,
            engine=engine,
            attempt=claimed.attempt,
        )
        started = time.perf_counter()
        outcome = "lost"
        try:
            with tracing.task_span(claimed):
                outcome = await self._process(claimed)
        finally:
            RUN_DURATION.labels(engine, outcome).observe(time.perf_counter() - started)
            logs.reset(context)

    async def _process(self, claimed: ClaimedTask) -> str:
        control = JobControl()

        async def checkpoint(state: dict[str, Any]) -> None:
            if not await queue.save_engine_state(self.db, claimed, state):
                log.warning("%s: could not save engine state of %s", self.name, claimed.task_id)

        control.checkpoint = checkpoint
        progress = _Progress()
        control.on_progress = progress.update
        self._current = control
        job_task = asyncio.create_task(self._execute(claimed, control, progress))
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
            return await job_task
        finally:
            stop_wait.cancel()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self._current = None

    async def _heartbeat(
        self, claimed: ClaimedTask, control: JobControl, progress: _Progress
    ) -> None:
        """Every tick: write progress if it moved (extending the lease), or at
        least look for a cancel request; extend the lease when it is due."""
        written = 0
        since_lease = 0.0
        tick = min(PROGRESS_WRITE_INTERVAL, self.config.heartbeat_seconds)
        while True:
            await asyncio.sleep(tick)
            since_lease += tick
            percent = progress.percent
            try:
                if percent == written and since_lease < self.config.heartbeat_seconds:
                    beat = queue.Heartbeat(True, await queue.cancel_requested(self.db, claimed))
                else:
                    beat = await queue.heartbeat(
                        self.db, claimed, self.config.lease_seconds, percent
                    )
                    written, since_lease = percent, 0.0
            except Exception:
                log_failure(log, "%s: heartbeat failed for %s", self.name, claimed.task_id)
                continue
            if not beat.alive:
                LEASE_LOST.labels(claimed.engine or self.engine.name).inc()
                log.warning("%s: lost the lease on %s; stopping it", self.name, claimed.task_id)
                progress.stop_reason = "lease lost"
                control.cancel_event.set()
                return
            if beat.cancel_requested and progress.stop_reason is None:
                log.info("%s: %s cancelled by its owner; stopping it", self.name, claimed.task_id)
                progress.stop_reason = "cancelled"
                control.cancel_event.set()

    async def _execute(self, claimed: ClaimedTask, control: JobControl, progress: _Progress) -> str:
        """Run the attempt and end it; returns how it ended (`imagine_task_run_seconds`)."""
        task_id = claimed.task_id
        workdir = Path(tempfile.mkdtemp(prefix=f"{task_id}-", dir=self.workdir))
        outcome = "lost"
        try:
            paths = await asyncio.wait_for(
                self._generate(claimed, control, workdir), self.config.task_timeout
            )
            with self._stage(claimed, "upload"):
                keys = await self._store(task_id, paths)
            ended = await self._settle(lambda: queue.complete(self.db, claimed, keys))
            if ended == COMPLETED:
                outcome = "completed"
                log.info("%s: %s completed (attempt %d)", self.name, task_id, claimed.attempt)
            else:
                outcome = "cancelled" if ended == CANCELLED else "lost"
                why = "cancelled by its owner first" if ended else "lease lost"
                log.warning("%s: result of %s discarded: %s", self.name, task_id, why)
                for key in keys:
                    await asyncio.to_thread(self.storage.delete, key)
        except Cancelled:
            if progress.stop_reason == "cancelled":
                if await self._settle(lambda: queue.cancel_running(self.db, claimed)):
                    outcome = "cancelled"
                    log.info("%s: %s cancelled and refunded", self.name, task_id)
            elif self._stopping.is_set():
                released = await self._settle(lambda: queue.release(self.db, claimed))
                if released == PENDING:
                    outcome = "released"
                    log.info("%s: %s handed back to the queue at shutdown", self.name, task_id)
                elif released == CANCELLED:
                    outcome = "cancelled"
                    log.info("%s: %s cancelled at shutdown, as its owner asked", self.name, task_id)
        except TaskFailure as failure:
            outcome = await self._fail(
                claimed,
                failure.reason,
                failure.detail,
                failure.retryable,
                refusal=_refusal_of(claimed, failure),
            )
        except TimeoutError:
            control.cancel_event.set()
            outcome = await self._fail(
                claimed, FailureReason.BUILD_FAILED, "task time limit exceeded", retryable=False
            )
        except Exception as exc:
            log.exception("%s: %s crashed", self.name, task_id)
            outcome = await self._fail(
                claimed, FailureReason.BUILD_FAILED, repr(exc), retryable=True
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if outcome in _ENDED:  # committed: its input images are no longer needed
                await self.inputs.discard(claimed.request.stored_images)
        return outcome

    @contextlib.contextmanager
    def _stage(self, claimed: ClaimedTask, stage: str) -> Iterator[None]:
        """Time one stage of the attempt into `imagine_engine_stage_seconds` (when it succeeds)."""
        started = time.perf_counter()
        yield
        engine = claimed.engine or self.engine.name
        STAGE_DURATION.labels(engine, stage).observe(time.perf_counter() - started)

    async def _store(self, task_id: str, paths: list[Path]) -> list[str]:
        """Every output in storage, or none: when one cannot be stored (after the
        storage's own retries), those already stored are deleted and the
        attempt fails (the queue retries it)."""
        keys: list[str] = []
        try:
            for path in paths:
                keys.append(await asyncio.to_thread(self.storage.save, task_id, path))
        except BaseException:
            for key in keys:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.storage.delete, key)
            raise
        return keys

    async def _settle(self, write: Callable[[], Awaitable[T]]) -> T:
        """An ending's write, tried again while the database is out of reach (a
        failover): the result waits in the worker rather than being lost or
        turned into a failure. Each write is fenced by the lease, so repeating
        one is safe. Gives up only when the worker is told to stop."""
        delay = SETTLE_FIRST_DELAY
        while True:
            try:
                return await write()
            except Exception as exc:
                if not database_unavailable(exc) or self._stopping.is_set():
                    raise
                log.warning("%s: database unavailable, retrying in %.1fs", self.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_MAX_DELAY)

    async def _generate(
        self, claimed: ClaimedTask, control: JobControl, workdir: Path
    ) -> list[Path]:
        request = claimed.request
        forced = TEST_OUTCOMES.get(claimed.test_outcome or "")
        if forced is not None:
            raise TaskFailure(forced, f"test outcome {claimed.test_outcome!r} requested")
        engine = self.engines.get(claimed.engine, self.engine)
        width, height = request.size_for(engine.capabilities)
        images: list[InputImage] = []
        if request.images:
            with self._stage(claimed, "fetch_inputs"):
                images = await self._input_images(request, width, height)
        if self.moderator is not None:  # before any engine time is spent
            with self._stage(claimed, "moderate"):
                await self.moderator.check_input(request.mode, request.prompt, images)
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
            fps=engine.capabilities.fps,
            resume=claimed.engine_state,
        )
        with self._stage(claimed, "generate"):
            paths = await engine.generate(job, workdir, control)
        if self.moderator is not None:  # before anything is stored
            with self._stage(claimed, "moderate"):
                await self.moderator.check_output(request.mode, paths)
        return paths

    async def _input_images(
        self, request: GenerationRequest, width: int, height: int
    ) -> list[InputImage]:
        """Stored inputs from storage and URLs through the fetcher, concurrently;
        then checked (per image and against the task's pixel budget) and decoded
        one at a time, each reduced to what a width x height frame can show."""

        def load(image: str | StoredImage) -> Awaitable[bytes]:
            if isinstance(image, StoredImage):
                return self.inputs.read(image)
            return self.fetcher.download(image)

        blobs = await gather_or_cancel([load(image) for image in request.images])
        return await asyncio.to_thread(
            inspect_images,
            blobs,
            max_pixels=self.config.image_max_pixels,
            max_task_pixels=self.config.task_max_pixels,
            short_side=INPUT_HEADROOM * max(width, height),
        )

    async def _fail(
        self,
        claimed: ClaimedTask,
        reason: FailureReason,
        detail: str,
        retryable: bool,
        refusal: Refusal | None = None,
    ) -> str:
        """Fail this attempt: "failed" when that ended the task (no retry left),
        "retried" when it went back to the queue, "lost" without the lease."""
        retry_after = self.config.retry_delay * 2 ** (claimed.attempt - 1) if retryable else None
        outcome = await self._settle(
            lambda: queue.fail(
                self.db, claimed, reason, detail, retry_after=retry_after, refusal=refusal
            )
        )
        if refusal is not None and outcome == FAILED:
            metrics.content_refused(refusal.stage, refusal.check)
        log.warning(
            "%s: %s attempt %d failed (%s): %s -> %s",
            self.name,
            claimed.task_id,
            claimed.attempt,
            reason.value,
            detail,
            outcome or "lease lost",
        )
        return {FAILED: "failed", PENDING: "retried", CANCELLED: "cancelled"}.get(
            outcome or "", "lost"
        )


# Attempts that ended their task (its stored inputs can go).
_ENDED = frozenset({"completed", "cancelled", "failed"})


def _refusal_of(claimed: ClaimedTask, failure: TaskFailure) -> Refusal | None:
    """What the refusal record says of a failure: the policy's own refusal, or an
    engine's upstream verdict (xAI's moderation); a test key's forced outcome
    is not a refusal."""
    if isinstance(failure, ContentRefused):
        return failure.refusal
    forced = claimed.test_outcome in TEST_OUTCOMES
    if failure.reason is FailureReason.INAPPROPRIATE and not forced:
        return Refusal("engine", "engine", claimed.engine or "engine", failure.detail)
    return None


class _Progress:
    """Progress reported by an engine thread, read by the heartbeat loop, and
    why the heartbeat asked the engine to stop."""

    def __init__(self) -> None:
        self.percent = 0
        self.stop_reason: str | None = None

    def update(self, fraction: float) -> None:
        self.percent = max(self.percent, min(99, int(fraction * 100)))
