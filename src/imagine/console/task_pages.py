"""The playground and the account's tasks: submit, watch live, cancel, review.

A submit goes through `imagine.tasks.actions.submit_generation` (the API's
own path: validation, charge, queue) and counts against the account's
per-minute limit like an API request. The live panel is polled with htmx
once a second until the task ends, then stops."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from imagine.api.text import Text
from imagine.console.context import (
    Console,
    ConsoleRoute,
    checked_form,
    console_of,
    is_htmx,
    see_other,
    signed_in,
)
from imagine.console.generation_form import (
    choices_for,
    generation_body,
    request_fields,
    uploaded_files,
)
from imagine.console.sessions import SignedIn
from imagine.console.snippets import build_snippets
from imagine.errors import ApiError, RateLimited, TaskFinished
from imagine.tasks import service as tasks
from imagine.tasks.actions import submit_generation, task_view
from imagine.tasks.states import FINISHED
from imagine.webhooks import service as webhooks

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

TASKS_PER_PAGE = 25
Status = Literal["pending", "processing", "completed", "failed", "cancelled"]


def _playground_context(console: Console, request: Request, signed: SignedIn) -> dict[str, Any]:
    engine = console.svc.engine_for(signed.principal)
    choices = choices_for(console.svc.settings, engine.capabilities)
    defaults = {
        "prompt": "",
        "mode": choices.modes[0] if choices.modes else "normal",
        "ratio": "16:9",
        "duration": 6,
        "resolution": "480p",
    }
    base_url = console.base_url(request).rstrip("/")
    return {
        "choices": choices,
        "defaults": defaults,
        "engine": engine.name,
        "cost": console.svc.submit_policy(signed.principal).cost,
        "snippets": build_snippets(
            {"prompt": "a lighthouse at dusk", "mode": defaults["mode"]}, base_url
        ),
        "max_image_mb": console.svc.settings.image_max_bytes // (1024 * 1024),
    }


@router.get("/playground")
async def playground(request: Request) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    context = _playground_context(console, request, signed)
    return console.render(request, "playground.html", context, signed=signed)


@router.post("/playground/snippets")
async def snippets(request: Request) -> Response:
    """The code snippets for the form as it is now (htmx, as the user types)."""
    signed = await signed_in(request)
    form = await checked_form(request, signed)
    console = console_of(request)
    try:
        fields = request_fields(form, uploads=_count(form, "image_file_count"))
    except ApiError:
        fields = {}
    fields.setdefault("prompt", "")
    code = build_snippets(fields, console.base_url(request).rstrip("/"))
    return console.render(request, "_snippets.html", {"snippets": code}, signed=signed)


def _count(form: FormData, name: str) -> int:
    raw = form.get(name)
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) < 3 else 0


@router.post("/playground")
async def submit(request: Request) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    settings = console.svc.settings
    form = await checked_form(
        request,
        signed,
        max_bytes=settings.body_limit,
        max_files=settings.max_images,
    )
    try:
        await _within_rate_limit(console, signed)
        body = await generation_body(form)
        task_id = await submit_generation(console.svc, signed.principal, body)
    except ApiError as exc:
        if not is_htmx(request):
            raise
        return console.render(
            request, "_submit_error.html", {"message": exc.message}, signed=signed
        )
    finally:
        for upload in uploaded_files(form):
            await upload.close()
    if not is_htmx(request):
        return see_other(request, f"/tasks/{task_id}")
    return await _live(request, console, signed, task_id, first=True)


async def _within_rate_limit(console: Console, signed: SignedIn) -> None:
    principal = signed.principal
    state = await console.svc.limiter.hit(
        principal.rate_limit_identity, console.svc.settings.rate_limit_for(principal.plan)
    )
    if not state.allowed:
        raise RateLimited("Rate limit exceeded", headers=state.headers())


async def _view(
    request: Request, console: Console, signed: SignedIn, task_id: str
) -> dict[str, Any]:
    task = await tasks.get_task(console.svc.db, signed.principal, task_id)
    return await task_view(console.svc, task, lambda: console.base_url(request))


async def _live(
    request: Request,
    console: Console,
    signed: SignedIn,
    task_id: str,
    *,
    first: bool = False,
    notice: str | None = None,
) -> Response:
    view = await _view(request, console, signed, task_id)
    return console.render(
        request,
        "_task_live.html",
        {"task": view, "finished": view["status"] in FINISHED, "first": first, "notice": notice},
        signed=signed,
    )


@router.get("/tasks/{task_id}/live")
async def live(request: Request, task_id: str) -> Response:
    signed = await signed_in(request)
    return await _live(request, console_of(request), signed, task_id)


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: str) -> Response:
    signed = await signed_in(request)
    await checked_form(request, signed)
    console = console_of(request)
    notice = None
    try:
        await tasks.cancel(console.svc.db, signed.principal, task_id, console.svc.inputs)
    except TaskFinished as exc:
        notice = exc.message
    if not is_htmx(request):
        return see_other(request, f"/tasks/{task_id}")
    return await _live(request, console, signed, task_id, notice=notice)


@router.get("/tasks")
async def task_list(
    request: Request,
    status: Status | None = None,
    after: Annotated[Text | None, Query(max_length=100)] = None,
) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    page = await tasks.list_tasks(
        console.svc.db, signed.principal, status=status, limit=TASKS_PER_PAGE, after=after
    )
    return console.render(
        request,
        "tasks.html",
        {
            "tasks": page.tasks,
            "status": status,
            "statuses": get_args(Status),
            "next_after": page.tasks[-1]["id"] if page.has_more else None,
            "first_page": after is None,
        },
        signed=signed,
    )


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    view = await _view(request, console, signed, task_id)
    history = await tasks.task_history(console.svc.db, signed.principal, task_id)
    return console.render(
        request,
        "task.html",
        {
            "task": view,
            "history": history,
            "finished": view["status"] in FINISHED,
            "first": False,
            "notice": None,
            "deliveries": await webhooks.deliveries(console.svc.db, task_id),
        },
        signed=signed,
    )
