"""Everything `Client` and `AsyncClient` do, written once, without doing any I/O.

Each operation is a generator ("flow") that yields the I/O it needs as small
step objects (send this request, sleep this long, call this callback) and
receives the outcome back. The sync client runs a flow with blocking calls,
the async client with awaits; request building, response parsing, retry
decisions and polling are therefore shared, and only the few lines that touch
the network, the clock and the callbacks differ between the two.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from imagine import __version__
from imagine.client._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ImagineError,
    MissingAPIKey,
    TaskFailed,
    TaskFinished,
    UnexpectedResponse,
    UsageError,
    WaitTimeout,
    error_from_response,
)
from imagine.client._images import ImageInput, image_urls
from imagine.client._models import (
    Account,
    LedgerPage,
    RateLimit,
    Task,
    TaskDeliveries,
    TaskPage,
)
from imagine.client._retry import RetryPolicy

T = TypeVar("T")
C = TypeVar("C")
T_co = TypeVar("T_co", covariant=True)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
MAX_POLL_INTERVAL = 5.0
USER_AGENT = f"imagine-python/{__version__}"

ProgressCallback: TypeAlias = Callable[[Task], object]


@dataclass(frozen=True)
class Send:
    """Send one request; the outcome is the `httpx.Response` (body read) or the `httpx` error.

    With `save_to`, a success body is streamed to that file instead of read.
    """

    method: str
    url: str
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    save_to: Path | None = None
    follow_redirects: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Notify:
    """Call the caller's progress callback (the async client awaits it if it is a coroutine)."""

    callback: ProgressCallback
    task: Task


Step: TypeAlias = Send | Sleep | Notify
Flow: TypeAlias = Generator[Step, object, T]


@dataclass(frozen=True)
class Config:
    api_key: str
    base_url: str
    retry: RetryPolicy

    @classmethod
    def resolve(
        cls, api_key: str | None, base_url: str | None, max_retries: int, max_retry_wait: float
    ) -> Config:
        """Arguments first, then `IMAGINE_API_KEY` / `IMAGINE_BASE_URL`, then the local default."""
        key = (api_key if api_key is not None else os.environ.get("IMAGINE_API_KEY", "")).strip()
        if not key:
            raise MissingAPIKey(
                "No API key: pass api_key=... or set the IMAGINE_API_KEY environment variable"
            )
        url = (base_url or os.environ.get("IMAGINE_BASE_URL") or DEFAULT_BASE_URL).strip()
        if not url.lower().startswith(("http://", "https://")):
            raise UsageError(f"The base URL must start with http:// or https://, got {url!r}")
        if max_retries < 0:
            raise UsageError("max_retries must be 0 (no retries) or more")
        if max_retry_wait < 0:
            raise UsageError("max_retry_wait must be 0 or more seconds")
        retry = RetryPolicy(max_retries=max_retries, max_wait=max_retry_wait)
        return cls(api_key=key, base_url=url.rstrip("/"), retry=retry)


class Flows:
    """The API's operations as flows, parametrised by one client's configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config

    # -- the operations ------------------------------------------------------

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
    ) -> Flow[str]:
        # Only what the caller chose is sent, so the server's defaults (and any
        # operator configuration behind them) apply to the rest.
        body: dict[str, Any] = {"prompt": prompt}
        chosen: dict[str, Any] = {
            "mode": mode,
            "ratio": ratio,
            "duration": duration,
            "resolution": resolution,
            "seed": seed,
            "callback_url": callback_url,
        }
        body.update({name: value for name, value in chosen.items() if value is not None})
        if images is not None:
            body["images"] = image_urls(images)
        # One key for every attempt of this call: a retry after a lost answer
        # returns the task the server already made instead of charging again.
        key = idempotency_key or str(uuid.uuid4())
        response = yield from self.request(
            "POST", "/v1/generate", json=body, headers={"Idempotency-Key": key}
        )
        data = _data(response)
        task_id = data.get("task_id")
        if not isinstance(task_id, str):
            raise UnexpectedResponse("The answer has no task_id", status=response.status_code)
        return task_id

    def status(self, task_id: str) -> Flow[Task]:
        response = yield from self.request("GET", "/v1/status", params={"task_id": task_id})
        return Task.from_data(_data(response), RateLimit.from_headers(response.headers))

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None,
        poll_interval: float,
        on_progress: ProgressCallback | None,
    ) -> Flow[Task]:
        """Poll until the task finishes; slower while nothing changes, quick again when it does."""
        if poll_interval <= 0:
            raise UsageError("poll_interval must be more than 0 seconds")
        task_id = task.task_id if isinstance(task, Task) else task
        deadline = None if timeout is None else time.monotonic() + timeout
        ceiling = max(poll_interval, MAX_POLL_INTERVAL)
        interval = poll_interval
        seen: tuple[str, int | None] | None = None
        while True:
            current = yield from self.status(task_id)
            state = (current.status, current.progress)
            if state != seen:
                seen, interval = state, poll_interval
                if on_progress is not None:
                    yield Notify(on_progress, current)
            else:
                interval = min(interval * 1.5, ceiling)
            if current.succeeded:
                return current
            if current.failed:
                raise TaskFailed(current)
            if deadline is None:
                yield Sleep(interval)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(current, timeout or 0.0)
            yield Sleep(min(interval, left))

    def run(
        self,
        prompt: str,
        *,
        timeout: float | None,
        poll_interval: float,
        on_progress: ProgressCallback | None,
        **options: Any,
    ) -> Flow[Task]:
        task_id = yield from self.generate(prompt, **options)
        return (
            yield from self.wait(
                task_id, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress
            )
        )

    def download(self, task: Task | str, directory: str | os.PathLike[str]) -> Flow[list[Path]]:
        """Save each video as `<task_id>_<index>.mp4`; a task id gets fresh links first."""
        if isinstance(task, str):
            task = yield from self.status(task)
        if task.failed:
            raise TaskFailed(task)
        if not task.succeeded:
            raise UsageError(
                f"Task {task.task_id} is {task.status}; wait for it to complete before downloading"
            )
        target = Path(directory)
        paths = _video_paths(target, task)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"Cannot create the directory {target}: {exc}") from None
        for url, path in zip(task.response, paths, strict=True):
            # The links are signed; the API key is not sent with them, so it never
            # reaches a storage host or CDN that serves the files.
            yield from self.request("GET", url, save_to=path, authorized=False)
        return paths

    def cancel(self, task_id: str) -> Flow[Task]:
        """Ask the server to stop the task and refund it; a repeat is harmless, so it is retried.

        A retry after a lost answer finds the task already cancelled and gets
        `TaskFinished`, like a cancel of a task that ended any other way.
        """
        try:
            response = yield from self.request(
                "POST", "/v1/cancel", json={"task_id": task_id}, retry_safe=True
            )
        except TaskFinished as exc:
            exc.task_id = task_id
            raise
        return Task.from_data(_data(response), RateLimit.from_headers(response.headers))

    def tasks(self, status: str | None, limit: int, after: str | None) -> Flow[TaskPage]:
        params = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if after is not None:
            params["after"] = after
        response = yield from self.request("GET", "/v1/tasks", params=params)
        return TaskPage.from_data(_data(response), RateLimit.from_headers(response.headers))

    def account(self) -> Flow[Account]:
        response = yield from self.request("GET", "/v1/account")
        return Account.from_data(_data(response), RateLimit.from_headers(response.headers))

    def ledger(self, limit: int, after: int | None) -> Flow[LedgerPage]:
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = str(after)
        response = yield from self.request("GET", "/v1/account/ledger", params=params)
        return LedgerPage.from_data(_data(response), RateLimit.from_headers(response.headers))

    def create_webhook_secret(self, rotate: bool) -> Flow[str]:
        """A rotation may be repeated: a retry after a lost answer rotates again and
        returns the secret now in force. A first creation may not: its retry
        would find the secret made and never shown."""
        response = yield from self.request(
            "POST", "/v1/webhooks/secret", json={"rotate": rotate}, retry_safe=rotate
        )
        secret = _data(response).get("secret")
        if not isinstance(secret, str):
            raise UnexpectedResponse("The answer has no secret", status=response.status_code)
        return secret

    def deliveries(self, task_id: str) -> Flow[TaskDeliveries]:
        path = f"/v1/tasks/{quote(task_id, safe='')}/deliveries"
        response = yield from self.request("GET", path)
        return TaskDeliveries.from_data(_data(response))

    # -- one request, with retries -------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        save_to: Path | None = None,
        authorized: bool = True,
        retry_safe: bool = False,
    ) -> Flow[httpx.Response]:
        """Send until it succeeds or the retry policy gives up; raise the translated error.

        `retry_safe` marks a POST whose repeat does no harm (a cancel).
        """
        headers = dict(headers or {})
        if authorized:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        # A POST may only be repeated when the server can recognise the repeat.
        repeatable = retry_safe or method == "GET" or "Idempotency-Key" in headers
        step = Send(method, url, params, json, headers, save_to, follow_redirects=not authorized)
        attempt = 0
        while True:
            outcome = yield step
            error: ImagineError
            if isinstance(outcome, httpx.Response):
                if outcome.is_success:
                    return outcome
                error = error_from_response(outcome)
                transient = True
            elif isinstance(outcome, httpx.HTTPError):
                error, transient = _connection_error(outcome)
            else:  # pragma: no cover - a driver bug, not a network condition
                raise TypeError(f"unexpected outcome {outcome!r}")
            delay = self.config.retry.delay(attempt, error) if repeatable and transient else None
            if delay is None:
                raise error
            attempt += 1
            yield Sleep(delay)


class _Page(Protocol[T_co]):
    @property
    def has_more(self) -> bool: ...
    @property
    def next_after(self) -> T_co | None: ...


class Cursor(Generic[C]):
    """Where a walk through a paged list stands; the clients' iterators differ only in
    how they fetch each page.

        cursor = Cursor[str]()
        while not cursor.done:
            page = fetch(after=cursor.after)
            cursor.advance(page)
            ...page's items...
    """

    def __init__(self) -> None:
        self.after: C | None = None
        self.done = False

    def advance(self, page: _Page[C]) -> None:
        """Move past `page`; a server that says "more" without moving on is an error,
        not a reason to loop for ever."""
        if page.has_more and (page.next_after is None or page.next_after == self.after):
            raise UnexpectedResponse(
                "The list says there is more but gives no new next_after", status=200
            )
        self.after = page.next_after
        self.done = not page.has_more


# What `new_id("task")` makes on the server: the prefix and lower-case hex.
_TASK_ID = re.compile(r"task_[0-9a-f]{1,64}")


def _video_paths(directory: Path, task: Task) -> list[Path]:
    """Where `download` saves each video. The names come from the server's
    answer, so the task id must be one the API issues and every file must land
    directly in `directory`: a tampered answer (`"task_id": "../../x"`) must
    never write anywhere else."""
    inside = directory.resolve()
    names = [f"{task.task_id}_{index}.mp4" for index in range(len(task.response))]
    if _TASK_ID.fullmatch(task.task_id) is None or any(
        (inside / name).parent != inside for name in names
    ):
        raise UnexpectedResponse(
            f"Refusing to save the videos of task {task.task_id!r}: not a task id the "
            "API issues, so not a safe file name; nothing was written",
            status=200,
        )
    return [directory / name for name in names]


def _data(response: httpx.Response) -> dict[str, Any]:
    """The envelope's `data`; a success without one means we are not talking to Imagine."""
    try:
        body = response.json()
    except ValueError:
        body = None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise UnexpectedResponse(
            f"{response.request.url} answered without the API's JSON envelope "
            "(is the base URL right?)",
            status=response.status_code,
            headers=response.headers,
        )
    return data


def _connection_error(exc: httpx.HTTPError) -> tuple[APIConnectionError, bool]:
    """The SDK's error for an `httpx` failure, and whether trying again could help."""
    where = exc.request.url if _has_request(exc) else "the server"
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"Timed out talking to {where}: {exc}"), True
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return APIConnectionError(f"Cannot send to {where}: {exc}"), False
    transient = isinstance(exc, httpx.TransportError)
    return APIConnectionError(f"Cannot reach {where}: {str(exc) or type(exc).__name__}"), transient


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True
