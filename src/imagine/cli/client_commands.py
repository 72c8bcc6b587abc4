"""`imagine generate | status | download | cancel | tasks | account`: the API from a terminal.

These commands are a thin shell over the Python SDK (`imagine.client`) and use
nothing else of the package, so they behave exactly as a program using the
SDK would. Each failure is one line on stderr and a distinct exit code, so
scripts can tell "fix your input" from "try again later".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from imagine.client import (
    Account,
    APIConnectionError,
    Client,
    ImagineError,
    InsufficientCredits,
    InvalidRequest,
    MissingAPIKey,
    NotFound,
    RateLimited,
    Task,
    TaskFailed,
    TaskFinished,
    Unauthorized,
    UsageError,
    WaitTimeout,
)


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    AUTH = 3
    INSUFFICIENT_CREDITS = 4
    RATE_LIMITED = 5
    TASK_FAILED = 6
    NETWORK = 7
    NOT_FOUND = 8
    TIMEOUT = 9
    TASK_FINISHED = 10
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 other error, 2 bad input, 3 missing or invalid API key, "
    "4 insufficient credits, 5 rate limited, 6 task failed, 7 network, 8 not found, "
    "9 timed out waiting, 10 task already finished (cancel), 130 interrupted."
)

# Most specific first: PayloadTooLarge is an InvalidRequest, MissingAPIKey a UsageError.
_EXIT_FOR: tuple[tuple[type[ImagineError], ExitCode], ...] = (
    (MissingAPIKey, ExitCode.AUTH),
    (UsageError, ExitCode.BAD_INPUT),
    (InvalidRequest, ExitCode.BAD_INPUT),
    (Unauthorized, ExitCode.AUTH),
    (InsufficientCredits, ExitCode.INSUFFICIENT_CREDITS),
    (RateLimited, ExitCode.RATE_LIMITED),
    (TaskFailed, ExitCode.TASK_FAILED),
    (APIConnectionError, ExitCode.NETWORK),
    (NotFound, ExitCode.NOT_FOUND),
    (WaitTimeout, ExitCode.TIMEOUT),
    (TaskFinished, ExitCode.TASK_FINISHED),
)


def exit_code_for(error: ImagineError) -> ExitCode:
    for kind, code in _EXIT_FOR:
        if isinstance(error, kind):
            return code
    return ExitCode.ERROR


def _one_line(error: ImagineError) -> str:
    message = str(error)
    if isinstance(error, MissingAPIKey):
        message = "No API key: pass --api-key or set the IMAGINE_API_KEY environment variable"
    elif isinstance(error, RateLimited) and error.retry_after is not None:
        message += f"; retry in {error.retry_after:.0f} s"
    return "error: " + " ".join(message.split())


@contextmanager
def _reporting() -> Iterator[None]:
    """Turn SDK errors (and local file errors) into one stderr line and an exit code."""
    try:
        yield
    except ImagineError as exc:
        typer.echo(_one_line(exc), err=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.ERROR) from None


ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="API key (env IMAGINE_API_KEY)", show_default=False),
]
BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="Server URL (env IMAGINE_BASE_URL; default http://127.0.0.1:8000)",
        show_default=False,
    ),
]
MaxRetries = Annotated[
    int,
    typer.Option(
        "--max-retries", min=0, help="Retries of a request that hit 429, 5xx or the network"
    ),
]
DEFAULT_LIMIT = 20
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON only (no progress display)")]
OutDir = Annotated[Path, typer.Option("--out", help="Directory for the videos (created)")]


def _client(api_key: str | None, base_url: str | None, max_retries: int) -> Client:
    return Client(api_key, base_url, max_retries=max_retries)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False))


def _print_files(paths: list[Path], as_json: bool, task: dict[str, Any]) -> None:
    """Downloaded files: one path per line, or the task with a `files` list."""
    if as_json:
        _print_json({**task, "files": [str(path) for path in paths]})
    else:
        for path in paths:
            typer.echo(str(path))


@contextmanager
def _progress_display(task_id: str, enabled: bool) -> Iterator[Callable[[Task], None] | None]:
    """A live line on stderr (status, progress %, elapsed time), leaving stdout for results."""
    if not enabled:
        yield None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.fields[status]:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        job = progress.add_task(task_id, total=100, status="submitted")

        def show(task: Task) -> None:
            progress.update(job, completed=task.progress or 0, status=task.status)

        yield show


def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows (1-5000 characters)")],
    mode: Annotated[
        str | None, typer.Option(help="normal | fun | spicy | custom (server default: normal)")
    ] = None,
    ratio: Annotated[
        str | None,
        typer.Option(help="1:1 | 16:9 | 9:16 | 2:3 | 3:2 | 4:3 | 3:4 (server default: 16:9)"),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="Image URL (http, https, data:) or local file; repeat for several",
        ),
    ] = None,
    duration: Annotated[int | None, typer.Option(help="Seconds, 1-15 (server default: 6)")] = None,
    resolution: Annotated[
        str | None, typer.Option(help="480p | 720p (server default: 480p)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same video")] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Wait, then download the videos; or print the task id"
        ),
    ] = True,
    out: OutDir = Path("."),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the task")] = 600.0,
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """Generate a video (40 credits by default): wait and download it, or print its task id."""
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        task_id = client.generate(
            prompt,
            mode=mode,
            ratio=ratio,
            images=image or None,
            duration=duration,
            resolution=resolution,
            seed=seed,
        )
        if not wait:
            if as_json:
                _print_json({"task_id": task_id})
            else:
                typer.echo(task_id)
            return
        try:
            with _progress_display(task_id, enabled=not as_json) as show:
                task = client.wait(task_id, timeout=timeout, on_progress=show)
        except KeyboardInterrupt:
            # Stopping the wait does not stop the task: say how to pick it up again.
            typer.echo(f"interrupted: {task_id} goes on; see `imagine status {task_id}`", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        paths = client.download(task, out)
    _print_files(paths, as_json, task.to_dict())


def status(
    task_id: Annotated[str, typer.Argument(help="The id `imagine generate` printed")],
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """Show a task: status, progress, credits, and its video links once completed."""
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        task = client.status(task_id)
    _show_task(task, as_json)


def _show_task(task: Task, as_json: bool) -> None:
    if as_json:
        _print_json(task.to_dict())
        return
    progress = f" ({task.progress}%)" if task.progress is not None else ""
    rows = [
        ("task", task.task_id),
        ("status", task.status + progress),
        ("credits", str(task.consumed_credits)),
        ("created", task.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    if task.engine:
        rows.append(("engine", task.engine))
    if not task.finished:
        if task.cancel_requested:
            rows.append(("cancel", "requested: stops within seconds, then refunded"))
        if task.queue_position:  # 0 while running
            rows.append(("queue", f"position {task.queue_position}"))
        if task.eta_seconds is not None:
            rows.append(("eta", f"about {task.eta_seconds} s"))
    if task.error_message:
        rows.append(("error", task.error_message))
    rows.extend(("video", url) for url in task.response)
    _print_rows(rows)


def _print_rows(rows: list[tuple[str, str]]) -> None:
    for name, value in rows:
        typer.echo(f"{name:<8} {value}")


def download(
    task_id: Annotated[str, typer.Argument(help="A completed task's id")],
    out: OutDir = Path("."),
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """Download a completed task's videos as <task_id>_<n>.mp4 and print their paths."""
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        paths = client.download(task_id, out)
    _print_files(paths, as_json, {"task_id": task_id})


def cancel(
    task_id: Annotated[str, typer.Argument(help="The task to stop")],
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """Cancel a task and refund it: a pending one at once, a processing one within seconds.

    A task that already ended (completed, failed or cancelled) exits with 10.
    """
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        task = client.cancel(task_id)
    _show_task(task, as_json)


def tasks(
    status: Annotated[
        str | None,
        typer.Option(
            help="Only tasks in this state: pending | processing | completed | failed | cancelled"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Tasks per page")] = DEFAULT_LIMIT,
    after: Annotated[
        str | None,
        typer.Option(help="The next_after of the previous page", show_default=False),
    ] = None,
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """List your tasks, newest first, one page at a time."""
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        page = client.tasks(status=status, limit=limit, after=after)
    if as_json:
        _print_json(
            {
                "tasks": [task.to_dict() for task in page.tasks],
                "has_more": page.has_more,
                "next_after": page.next_after,
            }
        )
        return
    console = Console(highlight=False, soft_wrap=False)
    if not page.tasks:
        console.print("no tasks")
        return
    table = _tasks_table(page.tasks, console.width)
    if page.next_after is not None:
        again = f" --status {status}" if status else ""
        again += f" --limit {limit}" if limit != DEFAULT_LIMIT else ""
        table.caption = f"more: imagine tasks{again} --after {page.next_after}"
    console.print(table)


def _tasks_table(found: list[Task], width: int) -> Table:
    """One line per task; the prompt takes what room the other columns leave."""
    headers = ("task", "status", "credits", "created (UTC)")
    rows = [
        (
            task.task_id,
            task.status + (f" {task.progress}%" if task.status == "processing" else ""),
            str(task.consumed_credits),
            task.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for task in found
    ]
    widths = [max(len(header), *(len(row[n]) for row in rows)) for n, header in enumerate(headers)]
    room = width - sum(widths) - 2 * len(headers)  # two spaces before each next column
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for header in headers:
        table.add_column(header, no_wrap=True, justify="right" if header == "credits" else "left")
    with_prompt = room >= 8
    if with_prompt:
        table.add_column("prompt", no_wrap=True, overflow="ellipsis", width=room)
    for task, row in zip(found, rows, strict=True):
        # Text, not a string: a prompt is shown as written, never read as rich markup.
        prompt = Text(" ".join(str(task.request.get("prompt", "")).split()))
        table.add_row(*row, *((prompt,) if with_prompt else ()))
    return table


def account(
    as_json: AsJson = False,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    max_retries: MaxRetries = 3,
) -> None:
    """Show your plan, balance, rate limit, and spend and tasks over 24 hours and 30 days."""
    with _reporting(), _client(api_key, base_url, max_retries) as client:
        found = client.account()
    if as_json:
        _print_json(found.to_dict())
        return
    _print_rows(_account_rows(found))


def _account_rows(found: Account) -> list[tuple[str, str]]:
    rows = [
        ("account", found.account_id + (" (test key)" if found.test else "")),
        ("plan", found.plan),
        ("balance", f"{found.balance} credits"),
    ]
    if found.rate_limit is not None:
        limit = found.rate_limit
        rows.append(
            (
                "requests",
                f"{limit.remaining} of {limit.limit} left this minute "
                f"(resets {limit.reset_at.strftime('%H:%M:%S UTC')})",
            )
        )
    for window, used in found.usage.items():
        counts = ", ".join(f"{count} {state}" for state, count in used.tasks.items() if count)
        rows.append((window, f"{used.credits_spent} credits spent; tasks: {counts or 'none'}"))
    return rows


def register(app: typer.Typer) -> None:
    """Add the API client commands to the `imagine` command."""
    for command in (generate, status, download, cancel, tasks, account):
        app.command(epilog=EXIT_CODES_HELP)(command)
