"""`/v1/admin/`: accounts, credits and every key, for admin keys only.

An admin key is one key made with `imagine keys create --admin`, not an
account's property: the account's other keys, the ones its apps carry, hold
no operator power. Any other key is answered 403 `FORBIDDEN` before the
route reads anything of the request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from imagine.accounts import admin
from imagine.accounts import service as accounts
from imagine.accounts.endpoints import (
    ACCOUNT_ID,
    BAD_KEY_CURSOR,
    KEY_CURSOR,
    KEY_EXAMPLE,
    KEY_ID_PATH,
    LIMIT,
    UNKNOWN_KEY,
    issued_view,
    key_view,
    page_view,
)
from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.openapi import answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.errors import Forbidden, InvalidRequest, NotFound
from imagine.queue.overview import queue_overview
from imagine.tasks.endpoints import bearer
from imagine.tasks.service import isoformat

NOT_ADMIN = Forbidden("This needs an admin key")


class AdminRoute(APIRoute):
    """A route that refuses any key but an admin key before FastAPI reads the
    request: whatever else such a key sends (a malformed body included), the
    answer is 403."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def admin_only(request: Request) -> Response:
            caller: Principal = request.state.principal  # set by V1Gate
            if not caller.is_admin:
                raise NOT_ADMIN
            return await handler(request)

        return admin_only


router = APIRouter(
    prefix="/v1/admin", dependencies=[Depends(bearer)], tags=["admin"], route_class=AdminRoute
)

ACCOUNT_EXAMPLE = {
    "account_id": ACCOUNT_ID,
    "name": "Lighthouse Studio",
    "plan": "pro",
    "balance": 5000,
    "created_at": "2026-11-25T20:00:00Z",
    "active_keys": 2,
    "webhook_secret": True,
}
UNKNOWN_ACCOUNT = NotFound("Account not found")


def account_view(listing: admin.AccountListing) -> dict[str, Any]:
    return {
        "account_id": listing.account_id,
        "name": listing.name,
        "plan": listing.plan,
        "balance": listing.balance,
        "created_at": isoformat(listing.created_at),
        "active_keys": listing.active_keys,
        "webhook_secret": listing.webhook_secret,
    }


@router.get(
    "/accounts",
    responses=answers(
        {"accounts": [ACCOUNT_EXAMPLE], "has_more": True, "next_after": ACCOUNT_ID},
        InvalidRequest("The after parameter must be an account id from a previous page"),
        NOT_ADMIN,
    ),
)
async def list_accounts(
    svc: Annotated[Services, Depends(services)],
    limit: LIMIT = 20,
    after: Annotated[
        Text | None,
        Query(description="next_after of the previous page", openapi_examples=examples(ACCOUNT_ID)),
    ] = None,
) -> JSONResponse:
    """Every account, newest first: plan, balance, unrevoked keys, and whether it
    has a webhook signing secret."""
    async with svc.db.read() as session:
        page = await admin.account_page(session, limit=limit, after=after)
    return success(
        {
            "accounts": [account_view(listing) for listing in page.accounts],
            "has_more": page.has_more,
            "next_after": page.accounts[-1].account_id if page.has_more else None,
        }
    )


class NewAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Text = Field(default="free", description="free | pro | enterprise")
    credits: StrictInt = Field(default=0, description="Starting credits, granted in the ledger.")
    name: Annotated[Text, Field(max_length=200)] = ""
    test: StrictBool = Field(default=False, description="Make the first key a test key.")


@router.post(
    "/accounts",
    responses=answers(
        {
            "key": "imk_7Hq2ZkP4Vd9sWb1nRt6yCe3uLa8mJf5x0Gx9Lm",
            **KEY_EXAMPLE,
            "name": "Lighthouse Studio",
            "balance": 5000,
        },
        InvalidRequest("The plan parameter must be one of: free, pro, enterprise"),
        NOT_ADMIN,
    ),
)
async def create_account(
    svc: Annotated[Services, Depends(services)],
    body: Annotated[
        NewAccountBody,
        Body(
            openapi_examples=examples({"plan": "pro", "credits": 5000, "name": "Lighthouse Studio"})
        ),
    ],
) -> JSONResponse:
    """A new account with its first key, as `imagine keys create` makes them. The
    full `key` is in this answer only."""
    async with svc.db.write() as session:
        issued = await admin.open_account(
            session, plan=body.plan, credits=body.credits, name=body.name, is_test=body.test
        )
    return success({**issued_view(issued), "balance": issued.credits})


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(description=f"Credits to add, 1 to {2**63 - 1}.")
    note: Annotated[Text, Field(max_length=150, description="Kept in the ledger row.")] = ""


@router.post(
    "/accounts/{account_id}/credits",
    responses=answers(
        {"account_id": ACCOUNT_ID, "granted": 1000, "balance": 6000},
        InvalidRequest(
            f"granting 1000 credits would take the balance of {ACCOUNT_ID} beyond "
            f"{2**63 - 1}; nothing was granted"
        ),
        NOT_ADMIN,
        UNKNOWN_ACCOUNT,
    ),
)
async def grant_credits(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    account_id: Annotated[
        Text, Path(description="An account_id", openapi_examples=examples(ACCOUNT_ID))
    ],
    body: Annotated[
        GrantBody,
        Body(openapi_examples=examples({"amount": 1000, "note": "November top-up"})),
    ],
) -> JSONResponse:
    """Add credits to an account: one `grant` row in its ledger, with the balance
    after it and the granting key's id in its note."""
    async with svc.db.write() as session:
        balance = await admin.grant_credits(session, caller, account_id, body.amount, body.note)
    return success({"account_id": account_id, "granted": body.amount, "balance": balance})


@router.get(
    "/keys",
    responses=answers(
        {"keys": [KEY_EXAMPLE], "has_more": False, "next_after": None},
        BAD_KEY_CURSOR,
        NOT_ADMIN,
    ),
)
async def list_keys(
    svc: Annotated[Services, Depends(services)],
    account_id: Annotated[
        Text | None,
        Query(description="Only this account's keys", openapi_examples=examples(ACCOUNT_ID)),
    ] = None,
    limit: LIMIT = 20,
    after: KEY_CURSOR = None,
) -> JSONResponse:
    """Every key of every account (or of `account_id`), newest first; never the
    keys themselves."""
    async with svc.db.read() as session:
        page = await accounts.key_page(session, account_id=account_id, limit=limit, after=after)
    return success(page_view(page))


@router.delete(
    "/keys/{key_id}",
    responses=answers(
        {**KEY_EXAMPLE, "revoked": True, "revoked_at": "2026-11-26T09:30:00Z"},
        NOT_ADMIN,
        UNKNOWN_KEY,
    ),
)
async def revoke_key(
    svc: Annotated[Services, Depends(services)], key_id: KEY_ID_PATH
) -> JSONResponse:
    """Revoke any key, as `imagine keys revoke` does: every API process refuses it
    within IMAGINE_KEY_CACHE_SECONDS."""
    async with svc.db.write() as session:
        listing = await accounts.revoke_any_key(session, key_id)
    return success(key_view(listing))


QUEUE_EXAMPLE = {
    "pending": 12,
    "processing": 4,
    "oldest_pending_at": "2026-11-25T19:58:10Z",
    "oldest_pending_seconds": 110,
    "engines": [
        {
            "engine": "preview",
            "pending": 12,
            "processing": 4,
            "finished_24h": {"cancelled": 1, "completed": 310, "failed": 2},
        }
    ],
    "recent_failures": [
        {
            "task_id": "task_6b1f2c9e0a4d8e7f5a3b1c2d",
            "account_id": ACCOUNT_ID,
            "engine": "preview",
            "error_message": "Network error, please try again later.",
            "error_detail": "image fetch: connection refused (https://example.com/a.png)",
            "attempts": 3,
            "finished_at": "2026-11-25T19:40:00Z",
        }
    ],
}


@router.get("/queue", responses=answers(QUEUE_EXAMPLE, NOT_ADMIN))
async def queue(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    """The queue across accounts: tasks pending and processing per engine, the
    oldest pending task's age, tasks finished per engine and status over the
    last 24 hours, and the latest failures with their reasons."""
    overview = await queue_overview(svc.db)
    return success(
        {
            "pending": overview.pending,
            "processing": overview.processing,
            "oldest_pending_at": (
                None
                if overview.oldest_pending_at is None
                else isoformat(overview.oldest_pending_at)
            ),
            "oldest_pending_seconds": (
                None if (age := overview.oldest_pending_seconds()) is None else round(age)
            ),
            "engines": [
                {
                    "engine": load.engine,
                    "pending": load.pending,
                    "processing": load.processing,
                    "finished_24h": load.finished,
                }
                for load in overview.engines
            ],
            "recent_failures": [
                {
                    **asdict(failure),
                    "finished_at": (
                        None if failure.finished_at is None else isoformat(failure.finished_at)
                    ),
                }
                for failure in overview.recent_failures
            ],
        }
    )
