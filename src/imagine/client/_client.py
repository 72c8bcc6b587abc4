"""`Client` and `AsyncClient`: the same operations, blocking or awaitable.

Both run the flows of `_flows` (request building, parsing, retries, polling,
all shared); the only code here is how each kind of client performs a step:
send a request, sleep, call a progress callback.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar, cast

import httpx

from imagine.client._flows import (
    DEFAULT_TIMEOUT,
    USER_AGENT,
    Config,
    Cursor,
    Flow,
    Flows,
    Notify,
    ProgressCallback,
    Send,
    Sleep,
)
from imagine.client._images import ImageInput
from imagine.client._models import Account, LedgerPage, Task, TaskDeliveries, TaskPage

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT = 60.0
DEFAULT_WAIT_TIMEOUT = 600.0
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_PAGE_SIZE = 20
DEFAULT_ITER_PAGE_SIZE = 50


class _BaseClient:
    """Configuration shared by both clients (resolved once, at construction)."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        max_retries: int,
        max_retry_wait: float,
    ) -> None:
        self._flows = Flows(Config.resolve(api_key, base_url, max_retries, max_retry_wait))

    @property
    def base_url(self) -> str:
        return self._flows.config.base_url

    @property
    def max_retries(self) -> int:
        return self._flows.config.retry.max_retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class Client(_BaseClient):
    """A blocking client for the Imagine API.

    `api_key` and `base_url` default to the `IMAGINE_API_KEY` and
    `IMAGINE_BASE_URL` environment variables (the URL then to
    http://127.0.0.1:8000). Failed requests are retried `max_retries` times
    when retrying is safe; no single wait is longer than `max_retry_wait`
    seconds. Pass an `httpx.BaseTransport` as `transport` to route requests
    through something else (a test double, a proxy). Use it as a context
    manager, or call `close()`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, max_retries, max_retry_wait)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    def generate(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        duration: int | None = None,
        resolution: str | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a generation (40 credits by default) and return its task id at once.

        Parameters left as None are not sent, so the server's defaults apply
        (`normal`, `16:9`, 6 s, `480p`). `images` takes URLs (http, https,
        data:), file paths, bytes or PIL images, one or a list. With
        `callback_url`, the server POSTs the task's status there, signed, when it
        ends (the account needs a webhook signing secret; see docs/webhooks.md).
        A retry of this call never charges twice: every attempt carries the same
        `Idempotency-Key` (a fresh one unless you give yours).
        """
        return self._drive(
            self._flows.generate(
                prompt,
                mode=mode,
                ratio=ratio,
                images=images,
                duration=duration,
                resolution=resolution,
                seed=seed,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
        )

    def status(self, task_id: str) -> Task:
        """The task as it is now."""
        return self._drive(self._flows.status(task_id))

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """Poll until the task completes and return it.

        `on_progress(task)` is called whenever the status or progress changes.
        Raises `TaskFailed` if the task fails or is cancelled, `WaitTimeout`
        after `timeout` seconds (None waits for ever); the task itself goes on.
        """
        return self._drive(
            self._flows.wait(
                task, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress
            )
        )

    def run(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        duration: int | None = None,
        resolution: str | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """`generate`, then `wait`: the completed task, with its video URLs in `response`."""
        return self._drive(
            self._flows.run(
                prompt,
                mode=mode,
                ratio=ratio,
                images=images,
                duration=duration,
                resolution=resolution,
                seed=seed,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
                timeout=timeout,
                poll_interval=poll_interval,
                on_progress=on_progress,
            )
        )

    def download(self, task: Task | str, directory: str | os.PathLike[str] = ".") -> list[Path]:
        """Stream a completed task's videos into `directory` (created if needed).

        Files are named `<task_id>_<index>.mp4` and appear only once complete.
        Pass a task id to fetch fresh links first (they expire, 24 h by default).
        """
        return self._drive(self._flows.download(task, directory))

    def cancel(self, task_id: str) -> Task:
        """Stop a task and refund its credits; return it as the server now has it.

        A pending task comes back `cancelled` at once; a processing one comes
        back with `cancel_requested` and is cancelled within seconds (`wait`
        then raises `TaskFailed`). A task that already ended raises
        `TaskFinished`, and so may a retried cancel whose first attempt
        succeeded unseen: call `status(task_id)` to see how it ended.
        """
        return self._drive(self._flows.cancel(task_id))

    def tasks(
        self, status: str | None = None, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> TaskPage:
        """One page of this key's tasks, newest first (`limit` 1-100).

        `status` keeps only tasks in that state; `after` is the previous page's
        `next_after`. Test keys see only test tasks, live keys only live ones.
        """
        return self._drive(self._flows.tasks(status, limit, after))

    def iter_tasks(
        self, status: str | None = None, page_size: int = DEFAULT_ITER_PAGE_SIZE
    ) -> Iterator[Task]:
        """Every task, newest first, fetching `page_size` (1-100) at a time as you go."""
        cursor = Cursor[str]()
        while not cursor.done:
            page = self.tasks(status, page_size, cursor.after)
            cursor.advance(page)
            yield from page.tasks

    def account(self) -> Account:
        """Plan, balance, usage over 24 h and 30 d, and this key's rate limit."""
        return self._drive(self._flows.account())

    def ledger(self, limit: int = DEFAULT_PAGE_SIZE, after: int | None = None) -> LedgerPage:
        """One page of the account's grants, debits and refunds, newest first (`limit` 1-100)."""
        return self._drive(self._flows.ledger(limit, after))

    def create_webhook_secret(self, *, rotate: bool = False) -> str:
        """Create the account's webhook signing secret (`whsec_…`) and return it: the
        only time it is shown. A `callback_url` is refused until the account has
        one. If it has one, this raises `Conflict` unless `rotate=True`, which
        replaces it at once (receivers must switch). Needs a live key."""
        return self._drive(self._flows.create_webhook_secret(rotate))

    def deliveries(self, task_id: str) -> TaskDeliveries:
        """The webhooks sent for a task with a `callback_url`, with every delivery attempt."""
        return self._drive(self._flows.deliveries(task_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _drive(self, flow: Flow[T]) -> T:
        outcome: object = None
        try:
            while True:
                try:
                    step = flow.send(outcome)
                except StopIteration as done:
                    return cast(T, done.value)
                outcome = None
                if isinstance(step, Send):
                    outcome = self._send(step)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Notify):
                    step.callback(step.task)
        finally:
            flow.close()

    def _send(self, step: Send) -> httpx.Response | httpx.RequestError:
        try:
            with self._http.stream(
                step.method,
                step.url,
                params=step.params,
                json=step.json,
                headers=step.headers,
                follow_redirects=step.follow_redirects,
            ) as response:
                if step.save_to is not None and response.is_success:
                    with _PartFile(step.save_to) as part:
                        for chunk in response.iter_bytes():
                            part.write(chunk)
                else:
                    response.read()
                return response
        except httpx.RequestError as exc:
            return exc


class AsyncClient(_BaseClient):
    """The awaitable twin of `Client`: same arguments, same methods, same errors.

    `transport` is an `httpx.AsyncBaseTransport`. An `on_progress` callback
    may be a plain function or a coroutine function. Use `async with`, or
    `await client.close()`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )

    async def generate(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        duration: int | None = None,
        resolution: str | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """See `Client.generate`."""
        return await self._drive(
            self._flows.generate(
                prompt,
                mode=mode,
                ratio=ratio,
                images=images,
                duration=duration,
                resolution=resolution,
                seed=seed,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
        )

    async def status(self, task_id: str) -> Task:
        """See `Client.status`."""
        return await self._drive(self._flows.status(task_id))

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,  # noqa: ASYNC109 - mirrors Client
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """See `Client.wait`."""
        return await self._drive(
            self._flows.wait(
                task, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress
            )
        )

    async def run(
        self,
        prompt: str,
        *,
        mode: str | None = None,
        ratio: str | None = None,
        images: ImageInput | Sequence[ImageInput] | None = None,
        duration: int | None = None,
        resolution: str | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,  # noqa: ASYNC109 - mirrors Client
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """See `Client.run`."""
        return await self._drive(
            self._flows.run(
                prompt,
                mode=mode,
                ratio=ratio,
                images=images,
                duration=duration,
                resolution=resolution,
                seed=seed,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
                timeout=timeout,
                poll_interval=poll_interval,
                on_progress=on_progress,
            )
        )

    async def download(
        self, task: Task | str, directory: str | os.PathLike[str] = "."
    ) -> list[Path]:
        """See `Client.download`."""
        return await self._drive(self._flows.download(task, directory))

    async def cancel(self, task_id: str) -> Task:
        """See `Client.cancel`."""
        return await self._drive(self._flows.cancel(task_id))

    async def tasks(
        self, status: str | None = None, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> TaskPage:
        """See `Client.tasks`."""
        return await self._drive(self._flows.tasks(status, limit, after))

    async def iter_tasks(
        self, status: str | None = None, page_size: int = DEFAULT_ITER_PAGE_SIZE
    ) -> AsyncIterator[Task]:
        """See `Client.iter_tasks`; use `async for`."""
        cursor = Cursor[str]()
        while not cursor.done:
            page = await self.tasks(status, page_size, cursor.after)
            cursor.advance(page)
            for task in page.tasks:
                yield task

    async def account(self) -> Account:
        """See `Client.account`."""
        return await self._drive(self._flows.account())

    async def ledger(self, limit: int = DEFAULT_PAGE_SIZE, after: int | None = None) -> LedgerPage:
        """See `Client.ledger`."""
        return await self._drive(self._flows.ledger(limit, after))

    async def create_webhook_secret(self, *, rotate: bool = False) -> str:
        """See `Client.create_webhook_secret`."""
        return await self._drive(self._flows.create_webhook_secret(rotate))

    async def deliveries(self, task_id: str) -> TaskDeliveries:
        """See `Client.deliveries`."""
        return await self._drive(self._flows.deliveries(task_id))

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _drive(self, flow: Flow[T]) -> T:
        outcome: object = None
        try:
            while True:
                try:
                    step = flow.send(outcome)
                except StopIteration as done:
                    return cast(T, done.value)
                outcome = None
                if isinstance(step, Send):
                    outcome = await self._send(step)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Notify):
                    result = step.callback(step.task)
                    if inspect.isawaitable(result):
                        await result
        finally:
            flow.close()

    async def _send(self, step: Send) -> httpx.Response | httpx.RequestError:
        try:
            async with self._http.stream(
                step.method,
                step.url,
                params=step.params,
                json=step.json,
                headers=step.headers,
                follow_redirects=step.follow_redirects,
            ) as response:
                if step.save_to is not None and response.is_success:
                    with _PartFile(step.save_to) as part:
                        async for chunk in response.aiter_bytes():
                            part.write(chunk)
                else:
                    await response.aread()
                return response
        except httpx.RequestError as exc:
            return exc


class _PartFile:
    """Writes beside the target and renames at the end, so an interrupted download
    never leaves a truncated video under the final name."""

    def __init__(self, target: Path) -> None:
        self._target = target
        self._part = target.with_name(target.name + ".part")
        self._file: IO[bytes] = self._part.open("wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def __enter__(self) -> _PartFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._part, self._target)
        else:
            self._part.unlink(missing_ok=True)
