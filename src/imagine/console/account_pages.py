"""The signed-in account's own pages: overview, usage, API keys, webhooks.

Each page reads through the same service functions as the `/v1` routes, with
the session's principal, so a browser sees exactly what its key may see."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from imagine.accounts import service as accounts
from imagine.accounts import usage
from imagine.api.text import Text
from imagine.console.charts import spend_chart
from imagine.console.context import (
    ConsoleRoute,
    checked_form,
    console_of,
    see_other,
    signed_in,
    text_field,
)
from imagine.errors import NotFound
from imagine.tasks import service as tasks
from imagine.webhooks import service as webhooks

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

Cursor = Annotated[Text | None, Query(max_length=100)]
KEYS_PER_PAGE = 50
LEDGER_PER_PAGE = 25
CHART_DAYS = 30


@router.get("/")
async def overview(request: Request) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    summary = await usage.account_summary(console.svc.db, signed.principal)
    recent = await tasks.list_tasks(
        console.svc.db, signed.principal, status=None, limit=5, after=None
    )
    return console.render(
        request,
        "overview.html",
        {
            "summary": summary,
            "recent": recent.tasks,
            "base_url": console.base_url(request).rstrip("/"),
            "cost": console.svc.submit_policy(signed.principal).cost,
        },
        signed=signed,
    )


@router.get("/usage")
async def usage_page(
    request: Request, after: Annotated[int | None, Query(ge=1)] = None
) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    page = await usage.ledger_page(
        console.svc.db, signed.principal, limit=LEDGER_PER_PAGE, after=after
    )
    days = await usage.spend_per_day(console.svc.db, signed.principal, days=CHART_DAYS)
    return console.render(
        request,
        "usage.html",
        {
            "entries": page.entries,
            "next_after": page.entries[-1]["id"] if page.has_more else None,
            "days": days,
            "chart": spend_chart(days),
            "first_page": after is None,
        },
        signed=signed,
    )


async def _keys_page(request: Request, after: str | None, **extra: object) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    async with console.svc.db.read() as session:
        page = await accounts.key_page(
            session,
            account_id=signed.principal.account_id,
            test_only=signed.principal.is_test,
            limit=KEYS_PER_PAGE,
            after=after,
        )
    return console.render(
        request,
        "keys.html",
        {
            "keys": page.keys,
            "next_after": page.keys[-1].key_id if page.has_more else None,
            "issued": None,
            **extra,
        },
        signed=signed,
    )


@router.get("/keys")
async def keys_page(request: Request, after: Cursor = None) -> Response:
    return await _keys_page(request, after)


@router.post("/keys")
async def create_key(request: Request) -> Response:
    signed = await signed_in(request)
    form = await checked_form(request, signed)
    console = console_of(request)
    async with console.svc.db.write() as session:
        issued = await accounts.add_key(
            session,
            signed.principal,
            name=text_field(form, "name").strip()[:200],
            test=form.get("test") == "on" or signed.principal.is_test,
            max_keys=console.svc.settings.account_max_keys,
        )
    return await _keys_page(request, None, issued=issued)


@router.get("/keys/{key_id}/revoke")
async def confirm_revoke(request: Request, key_id: str) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    async with console.svc.db.read() as session:
        key = await accounts.find_key(
            session,
            key_id,
            account_id=signed.principal.account_id,
            test_only=signed.principal.is_test,
        )
    if key is None:
        raise NotFound("Key not found")
    return console.render(request, "revoke_key.html", {"key": key}, signed=signed)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(request: Request, key_id: str) -> Response:
    signed = await signed_in(request)
    await checked_form(request, signed)
    console = console_of(request)
    async with console.svc.db.write() as session:
        await accounts.revoke_own_key(session, signed.principal, key_id)
    return see_other(request, "/keys")


@router.get("/webhooks")
async def webhooks_page(request: Request) -> Response:
    return await _webhooks_page(request, secret=None)


async def _webhooks_page(request: Request, secret: str | None) -> Response:
    signed = await signed_in(request)
    console = console_of(request)
    account_id = signed.principal.account_id
    return console.render(
        request,
        "webhooks.html",
        {
            "has_secret": await webhooks.has_secret(console.svc.db, account_id),
            "deliveries": await webhooks.recent_deliveries(console.svc.db, account_id, limit=25),
            "secret": secret,
        },
        signed=signed,
    )


@router.post("/webhooks/secret")
async def create_webhook_secret(request: Request) -> Response:
    signed = await signed_in(request)
    form = await checked_form(request, signed)
    console = console_of(request)
    secret = await webhooks.create_own_secret(
        console.svc.db,
        signed.principal,
        rotate=form.get("rotate") == "yes",
        box=console.svc.webhook_secrets,
    )
    return await _webhooks_page(request, secret=secret)
