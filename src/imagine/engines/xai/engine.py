"""The `xai` engine: Grok Imagine itself, through xAI's official SDK (`xai-sdk`, gRPC).

One job is: start (`GenerateVideo` → request id), poll (`GetDeferredVideo`
with back-off, reporting progress) until DONE / FAILED / EXPIRED, download the
finished MP4 from xAI's short-lived URL into the job's workdir, and check that
it decodes. The SDK's one-call `generate()` is not used: it hides progress and
has its own time limit.

Billing safety. `GenerateVideo` carries no idempotency key and xAI bills every
accepted start, so the gRPC channel's automatic retries (the SDK turns them on
for UNAVAILABLE) are switched off here, and a start is only retried (by the
queue) when it provably never reached xAI. Polls and the download are free
and are retried within the job. Once a start may have reached xAI, every
failure is final (`retryable=False`) and the task is refunded.

Cancellation is local: xAI has no cancel call. When `control.cancel_event` is
set, polling stops and `Cancelled` is raised; xAI finishes the video anyway
and bills for it.

Failures are mapped to the contract's sentences by the table in
`imagine.engines.xai.errors`; upstream text is logged, never shown.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import xai_sdk
from xai_sdk.proto import deferred_pb2

from imagine.engines.base import (
    OUTPUT_NAME,
    EngineCapabilities,
    GenerationJob,
    JobControl,
    ProgressCallback,
)
from imagine.engines.xai import errors
from imagine.engines.xai.errors import Phase, Upstream
from imagine.engines.xai.mapping import (
    MAX_MESSAGE_BYTES,
    REFERENCE_MAX_DURATION,
    VideoRequest,
    build_request,
)
from imagine.failures import Cancelled, TaskFailure
from imagine.media.video import probe_mp4
from imagine.settings import Settings

__all__ = ["OUTPUT_NAME", "XaiConfig", "XaiEngine"]

log = logging.getLogger("imagine.engines.xai")

RESUME_KEY = "xai_request_id"  # saved with JobControl.checkpoint after a start
_CANCEL_CHECK_SECONDS = 0.05
_BACKOFF = 1.5
_CHUNK = 1 << 16
# Progress: starting takes the first 2 %, generation up to 90 %, the download the rest.
_STARTED, _GENERATED, _DOWNLOADED = 0.02, 0.90, 0.98
_ESTIMATE_CEILING = 0.95  # a time-based estimate never claims more than this
_RESOLUTION_WEIGHT = {"480p": 1.0, "720p": 1.6, "1080p": 2.5}


@dataclass(frozen=True)
class XaiConfig:
    """Connection and pacing; built from `IMAGINE_XAI_*` settings by `from_settings`."""

    api_key: str
    api_host: str = "api.x.ai"
    insecure: bool = False
    model: str = "grok-imagine-video"
    timeout: float = 900.0
    rpc_timeout: float = 60.0
    poll_interval: float = 1.0
    poll_max_interval: float = 5.0
    poll_retries: int = 20
    download_attempts: int = 3
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_video_bytes: int = 1 << 30

    @classmethod
    def from_settings(cls, settings: Settings) -> XaiConfig:
        if settings.xai_api_key is None or not settings.xai_api_key.get_secret_value():
            raise ValueError("the xai engine needs the XAI_API_KEY environment variable")
        return cls(
            api_key=settings.xai_api_key.get_secret_value(),
            api_host=settings.xai_api_host,
            insecure=settings.xai_insecure,
            model=settings.xai_model,
            timeout=settings.xai_timeout_seconds,
            rpc_timeout=settings.xai_rpc_timeout_seconds,
            poll_interval=settings.xai_poll_interval,
            poll_max_interval=settings.xai_poll_max_interval,
            poll_retries=settings.xai_poll_retries,
        )


T = TypeVar("T")


class XaiEngine:
    """Grok Imagine video generation behind the `Engine` interface."""

    name = "xai"
    capabilities = EngineCapabilities(
        resolutions=frozenset({"480p", "720p", "1080p"}),
        max_images=7,
        max_duration_multi_image=REFERENCE_MAX_DURATION,
    )

    def __init__(self, config: XaiConfig) -> None:
        self.config = config

    async def generate(self, job: GenerationJob, workdir: Path, control: JobControl) -> list[Path]:
        """Generate upstream and write `workdir / OUTPUT_NAME`.

        Any unexpected error becomes a non-retryable `TaskFailure`: the queue
        would otherwise retry it with a second, billed `GenerateVideo`.
        """
        try:
            return await _Job(self.config, job, workdir, control).run()
        except (TaskFailure, Cancelled):
            raise
        except Exception as exc:
            log.exception("xai engine: task %s crashed", job.task_id)
            raise errors.classify(Upstream(Phase.LOCAL, errors.CRASH, repr(exc))) from exc


class _Job:
    """One generation: the state shared by its steps."""

    def __init__(
        self, config: XaiConfig, job: GenerationJob, workdir: Path, control: JobControl
    ) -> None:
        self.config = config
        self.job = job
        self.workdir = workdir
        self.control = control
        self.started = time.monotonic()
        self.deadline = self.started + config.timeout
        self.progress = _Progress(control.on_progress, _expected_seconds(job))
        self.request_id = ""

    async def run(self) -> list[Path]:
        request = await asyncio.to_thread(
            build_request,
            self.job,
            self.config.model,
            max_message_bytes=self.config.max_message_bytes,
        )
        self._check_cancelled("before starting")
        client = xai_sdk.AsyncClient(
            api_key=self.config.api_key,
            api_host=self.config.api_host,
            use_insecure_channel=self.config.insecure,
            timeout=self.config.rpc_timeout,
            # A retried GenerateVideo is a second, billed generation: retries
            # are decided here, per call, not by the channel.
            channel_options=[("grpc.enable_retries", 0)],
        )
        try:
            resumed = str(self.job.resume.get(RESUME_KEY) or "")
            if resumed:
                # An earlier attempt started this generation (and was billed for
                # it): poll that one instead of starting a second.
                self.request_id = resumed
                log.info("xai: %s resumes %s", self.job.task_id, resumed)
            else:
                await self._start(client, request)
                await self.control.checkpoint({RESUME_KEY: self.request_id})
            url = await self._wait(client)
        finally:
            await client.close()
        path = await self._download(url)
        await self._verify(path)
        self.progress.report(1.0)
        log.info(
            "xai: %s finished as %s in %.1f s",
            self.job.task_id,
            self.request_id,
            time.monotonic() - self.started,
        )
        return [path]

    # -- start and poll ------------------------------------------------------

    async def _start(self, client: Any, request: VideoRequest) -> None:
        try:
            reply = await self._guard(
                client.video.start(**request.start_kwargs()), Phase.START, "GenerateVideo"
            )
        except grpc.aio.AioRpcError as exc:
            raise errors.classify(_rpc_outcome(Phase.START, exc), "GenerateVideo") from None
        self.request_id = str(reply.request_id)
        if not self.request_id:
            raise errors.classify(Upstream(Phase.START, "NO_REQUEST_ID", "empty request_id"))
        log.info(
            "xai: %s started as %s (%s, %s, %d s, %s, model %s)",
            self.job.task_id,
            self.request_id,
            request.kind,
            request.aspect_ratio,
            request.duration,
            request.resolution,
            request.model,
        )
        self.progress.report(_STARTED)

    async def _wait(self, client: Any) -> str:
        """Poll until DONE and return the video URL, or raise the mapped failure."""
        interval = self.config.poll_interval
        failures = 0
        while True:
            try:
                reply = await self._guard(
                    client.video.get(self.request_id), Phase.POLL, "GetDeferredVideo"
                )
            except grpc.aio.AioRpcError as exc:
                outcome = _rpc_outcome(Phase.POLL, exc)
                if (
                    outcome.code in errors.TRANSIENT_POLL_CODES
                    and failures < self.config.poll_retries
                ):
                    failures += 1
                    log.info(
                        "xai: %s poll %s failed (%s: %s); retry %d of %d",
                        self.job.task_id,
                        self.request_id,
                        outcome.code,
                        outcome.text,
                        failures,
                        self.config.poll_retries,
                    )
                    await self._pause(interval, Phase.POLL)
                    interval = min(interval * _BACKOFF, self.config.poll_max_interval)
                    continue
                context = f"{self.request_id}, after {failures} retries"
                raise errors.classify(outcome, context) from None
            failures = 0
            status = reply.status
            response = reply.response if reply.HasField("response") else None
            if status == deferred_pb2.DeferredStatus.DONE:
                return self._video_url(response)
            if status == deferred_pb2.DeferredStatus.FAILED:
                text = "no error details"
                if response is not None and response.HasField("error"):
                    text = f"{response.error.code}: {response.error.message}"
                raise errors.classify(Upstream(Phase.RESULT, errors.FAILED, text), self.request_id)
            if status == deferred_pb2.DeferredStatus.EXPIRED:
                raise errors.classify(
                    Upstream(Phase.RESULT, errors.EXPIRED, "deferred request expired"),
                    self.request_id,
                )
            self.progress.waiting(int(response.progress) if response is not None else 0)
            await self._pause(interval, Phase.POLL)
            interval = min(interval * _BACKOFF, self.config.poll_max_interval)

    def _video_url(self, response: Any) -> str:
        """The URL of a DONE response; no URL is moderation or a broken answer.

        As in the SDK, a URL is delivered whatever `respect_moderation` says
        (the field has no presence, so unset reads as false).
        """
        if response is not None and response.video.url:
            return str(response.video.url)
        if response is not None and not response.video.respect_moderation:
            raise errors.classify(
                Upstream(Phase.RESULT, errors.DONE_MODERATED, "respect_moderation=false, no URL"),
                self.request_id,
            )
        raise errors.classify(
            Upstream(Phase.RESULT, errors.DONE_WITHOUT_URL, "DONE without a video URL"),
            self.request_id,
        )

    # -- download and check ---------------------------------------------------

    async def _download(self, url: str) -> Path:
        """Fetch the finished video (its URL expires); transient errors are retried."""
        if not url.startswith(("https://", "http://")):
            raise errors.classify(Upstream(Phase.DOWNLOAD, "BAD_URL", url[:200]))
        path = self.workdir / OUTPUT_NAME
        delay = self.config.poll_interval
        timeout = httpx.Timeout(self.config.rpc_timeout)
        async with httpx.AsyncClient(follow_redirects=True, timeout=timeout) as http:
            for attempt in range(1, self.config.download_attempts + 1):
                try:
                    await self._guard(self._fetch(http, url, path), Phase.DOWNLOAD, "download")
                    return path
                except _HttpStatus as exc:
                    outcome = Upstream(Phase.DOWNLOAD, errors.http(exc.status), exc.text)
                except httpx.HTTPError as exc:
                    outcome = Upstream(Phase.DOWNLOAD, errors.TRANSPORT, repr(exc))
                retry = outcome.code in errors.TRANSIENT_DOWNLOAD_CODES
                if not retry or attempt == self.config.download_attempts:
                    context = f"{self.request_id}, attempt {attempt}"
                    raise errors.classify(outcome, context)
                log.info("xai: %s download failed (%s); retrying", self.job.task_id, outcome)
                await self._pause(delay, Phase.DOWNLOAD)
                delay = min(delay * 2, self.config.poll_max_interval)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, http: httpx.AsyncClient, url: str, path: Path) -> None:
        partial = path.with_name(path.name + ".part")
        try:
            async with http.stream("GET", url) as answer:
                if answer.status_code != 200:
                    body = (await answer.aread())[:300].decode("utf-8", "replace")
                    raise _HttpStatus(answer.status_code, body)
                expected = int(answer.headers.get("content-length") or 0)
                received = 0
                with partial.open("wb") as out:
                    async for chunk in answer.aiter_bytes(_CHUNK):
                        received += len(chunk)
                        if received > self.config.max_video_bytes:
                            raise errors.classify(
                                Upstream(Phase.DOWNLOAD, errors.TOO_BIG, f"over {received} bytes")
                            )
                        out.write(chunk)
                        if expected:
                            share = min(received / expected, 1.0)
                            self.progress.report(_GENERATED + (_DOWNLOADED - _GENERATED) * share)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    async def _verify(self, path: Path) -> None:
        """The file must decode as video; its AAC audio track, if any, is kept as is."""
        problem = await asyncio.to_thread(_decode_problem, path)
        if problem is not None:
            raise errors.classify(
                Upstream(Phase.DOWNLOAD, errors.UNDECODABLE, problem), self.request_id
            )

    # -- time limit and cancellation ------------------------------------------

    async def _guard(self, awaitable: Awaitable[T], phase: Phase, what: str) -> T:
        """Await `awaitable`, giving up at the deadline or as soon as cancel is asked."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise self._time_limit(phase, what)
                done, _ = await asyncio.wait({task}, timeout=min(_CANCEL_CHECK_SECONDS, remaining))
                if done:
                    return task.result()
                self._check_cancelled(f"during {what}")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved: never "exception was never retrieved"

    async def _pause(self, seconds: float, phase: Phase) -> None:
        """Sleep between polls, waking for cancellation and the deadline."""
        until = min(time.monotonic() + seconds, self.deadline)
        while (left := until - time.monotonic()) > 0:
            self._check_cancelled("while waiting")
            await asyncio.sleep(min(_CANCEL_CHECK_SECONDS, left))
        self._check_cancelled("while waiting")
        if time.monotonic() >= self.deadline:
            raise self._time_limit(phase, "waiting")

    def _time_limit(self, phase: Phase, what: str) -> TaskFailure:
        text = f"no result within {self.config.timeout:g} s ({what})"
        return errors.classify(Upstream(phase, errors.TIME_LIMIT, text), self.request_id or "-")

    def _check_cancelled(self, when: str) -> None:
        if not self.control.cancel_event.is_set():
            return
        if self.request_id:
            log.warning(
                "xai: %s cancelled %s; xAI request %s keeps running and is billed "
                "(there is no cancel call)",
                self.job.task_id,
                when,
                self.request_id,
            )
        raise Cancelled(f"task {self.job.task_id}: cancelled {when}")


class _HttpStatus(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.text = text


class _Progress:
    """Monotonic progress: xAI's own `progress` when it sends one, else an estimate."""

    def __init__(self, on_progress: ProgressCallback, expected_seconds: float) -> None:
        self.on_progress = on_progress
        self.expected = expected_seconds
        self.started = time.monotonic()
        self.value = 0.0

    def waiting(self, upstream_percent: int) -> None:
        if upstream_percent > 0:
            fraction = min(upstream_percent, 100) / 100
        else:
            elapsed = time.monotonic() - self.started
            fraction = _ESTIMATE_CEILING * (1 - math.exp(-elapsed / self.expected))
        self.report(_STARTED + (_GENERATED - _STARTED) * fraction)

    def report(self, fraction: float) -> None:
        if fraction > self.value:
            self.value = fraction
            self.on_progress(fraction)


def _expected_seconds(job: GenerationJob) -> float:
    """A rough guess of xAI's generation time, only used when it reports no progress."""
    return (30 + 6 * job.duration) * _RESOLUTION_WEIGHT.get(job.resolution, 1.0)


def _decode_problem(path: Path) -> str | None:
    """Why `path` is not a playable video (and delete it), or None when it is."""
    try:
        info = probe_mp4(path)
    except Exception as exc:
        problem: str | None = repr(exc)
    else:
        problem = None if info.frames > 0 else "no video frames"
    if problem is not None:
        path.unlink(missing_ok=True)
    return problem


def _rpc_outcome(phase: Phase, exc: Any) -> Upstream:
    code = exc.code()
    return Upstream(phase, getattr(code, "name", str(code)), str(exc.details() or ""))
