"""Operator pages, for a session opened with an admin key (`imagine keys create
--admin`): accounts, opening one with its first key, granting credits,
revoking any key, the queue, and refused content with its review. The same
functions serve `/v1/admin/`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from imagine.accounts import admin
from imagine.accounts import service as accounts
from imagine.accounts.service import IssuedKey
from imagine.api.text import Text
from imagine.console.context import (
    ConsoleRoute,
    checked_form,
    console_of,
    see_other,
    signed_in,
    text_field,
)
from imagine.console.i18n import N_
from imagine.console.sessions import SignedIn
from imagine.errors import Forbidden, InvalidRequest
from imagine.moderation import records as moderation
from imagine.queue.overview import queue_overview
from imagine.settings import PLANS
from imagine.tasks import service as tasks

router = APIRouter(prefix="/admin", route_class=ConsoleRoute, include_in_schema=False)

Cursor = Annotated[Text | None, Query(max_length=100)]
PER_PAGE = 50


async def operator(request: Request) -> SignedIn:
    signed = await signed_in(request)
    if not signed.principal.is_admin:
        raise Forbidden(N_("This needs a session opened with an admin key"))
    return signed


def _whole_number(raw: str, name: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise InvalidRequest(f"The {name} parameter must be a whole number") from None


@router.get("")
async def accounts_page(request: Request, after: Cursor = None) -> Response:
    return await _accounts(request, await operator(request), after=after)


@router.post("/accounts")
async def create_account(request: Request) -> Response:
    signed = await operator(request)
    form = await checked_form(request, signed)
    async with console_of(request).svc.db.write() as session:
        issued = await admin.open_account(
            session,
            plan=text_field(form, "plan", "free"),
            credits=_whole_number(text_field(form, "credits", "0"), "credits"),
            name=text_field(form, "name").strip()[:200],
            is_test=form.get("test") == "on",
        )
    return await _accounts(request, signed, after=None, issued=issued)


async def _accounts(
    request: Request, signed: SignedIn, *, after: str | None, issued: IssuedKey | None = None
) -> Response:
    """The accounts page, with a just-opened account's first key shown once."""
    console = console_of(request)
    async with console.svc.db.read() as session:
        page = await admin.account_page(session, limit=PER_PAGE, after=after)
    return console.render(
        request,
        "admin_accounts.html",
        {
            "accounts": page.accounts,
            "next_after": page.accounts[-1].account_id if page.has_more else None,
            "plans": PLANS,
            "issued": issued,
            "starter": console.svc.settings.starter_credits,
        },
        signed=signed,
    )


@router.get("/accounts/{account_id}")
async def account_page(request: Request, account_id: str) -> Response:
    signed = await operator(request)
    console = console_of(request)
    async with console.svc.db.read() as session:
        account = await admin.find_account(session, account_id)
        keys = await accounts.key_page(session, account_id=account_id, limit=PER_PAGE, after=None)
    recent = await tasks.account_tasks(
        console.svc.db, account_id, is_test=False, status=None, limit=10, after=None
    )
    return console.render(
        request,
        "admin_account.html",
        {"account": account, "keys": keys.keys, "tasks": recent.tasks},
        signed=signed,
    )


@router.post("/accounts/{account_id}/grant")
async def grant(request: Request, account_id: str) -> Response:
    signed = await operator(request)
    form = await checked_form(request, signed)
    amount = _whole_number(text_field(form, "amount"), "amount")
    if amount < 1:
        raise InvalidRequest("The amount parameter must be at least 1")
    console = console_of(request)
    async with console.svc.db.write() as session:
        await admin.grant_credits(
            session, signed.principal, account_id, amount, text_field(form, "note").strip()[:100]
        )
    return see_other(request, f"/admin/accounts/{account_id}")


@router.post("/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> Response:
    signed = await operator(request)
    await checked_form(request, signed)
    console = console_of(request)
    async with console.svc.db.write() as session:
        listing = await accounts.revoke_any_key(session, key_id)
    return see_other(request, f"/admin/accounts/{listing.account_id}")


@router.get("/queue")
async def queue_page(request: Request) -> Response:
    signed = await operator(request)
    console = console_of(request)
    overview = await queue_overview(console.svc.db)
    return console.render(request, "admin_queue.html", {"queue": overview}, signed=signed)


@router.get("/moderation")
async def moderation_page(
    request: Request, after: Cursor = None, false_positive: bool | None = None
) -> Response:
    signed = await operator(request)
    console = console_of(request)
    async with console.svc.db.read() as session:
        page = await moderation.refusal_page(
            session, limit=PER_PAGE, after=after, false_positive=false_positive
        )
    shown = "" if false_positive is None else f"false_positive={str(false_positive).lower()}&"
    return console.render(
        request,
        "admin_moderation.html",
        {
            "refusals": page.refusals,
            "next_after": page.next_after,
            "shown": false_positive,
            "filter_query": shown,
        },
        signed=signed,
    )


@router.post("/moderation/{refusal_id}/review")
async def review_refusal(request: Request, refusal_id: str) -> Response:
    signed = await operator(request)
    form = await checked_form(request, signed)
    console = console_of(request)
    async with console.svc.db.write() as session:
        await moderation.review_refusal(
            session,
            refusal_id,
            false_positive=text_field(form, "false_positive") == "true",
            note=text_field(form, "note").strip(),
            reviewer=signed.principal.key_id,
        )
    return see_other(request, f"/admin/moderation#refusal-{refusal_id}")
