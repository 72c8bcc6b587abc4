"""The account holder's own routes: `GET /v1/account` and `GET /v1/account/ledger`
(balance, spend, history), and `/v1/keys` (list, create, revoke their keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from imagine.accounts import service as accounts
from imagine.accounts import usage
from imagine.accounts.service import IssuedKey, KeyListing, KeyPage, Principal
from imagine.api.envelope import success
from imagine.api.openapi import answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.errors import Forbidden, InvalidRequest, NotFound
from imagine.tasks.endpoints import TASK_ID, bearer
from imagine.tasks.service import isoformat

router = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], tags=["account"])

ACCOUNT_ID = "acct_3f0c9b2a1d4e5f6a7b8c9d0e"
KEY_ID = "key_9c2e4b1a0f3d5e7c8b6a4d2f"
KEY_EXAMPLE: dict[str, Any] = {
    "key_id": KEY_ID,
    "name": "staging",
    "display": "imk_7Hq2…x9Lm",
    "account_id": ACCOUNT_ID,
    "plan": "pro",
    "created_at": "2026-11-25T20:00:00Z",
    "test": False,
    "admin": False,
    "revoked": False,
    "revoked_at": None,
    "last_used_at": "2026-11-26T08:12:00Z",
}
LIMIT = Annotated[int, Query(ge=1, le=100, openapi_examples=examples(20))]
KEY_CURSOR = Annotated[
    Text | None,
    Query(description="next_after of the previous page", openapi_examples=examples(KEY_ID)),
]
KEY_ID_PATH = Annotated[
    Text, Path(description="A key_id from GET /v1/keys", openapi_examples=examples(KEY_ID))
]
BAD_KEY_CURSOR = InvalidRequest("The after parameter must be a key id from a previous page")
UNKNOWN_KEY = NotFound("Key not found")


def key_view(listing: KeyListing) -> dict[str, Any]:
    """A key as listings show it: never the key itself, only its prefix and last characters."""
    return {
        "key_id": listing.key_id,
        "name": listing.name,
        "display": listing.display,
        "account_id": listing.account_id,
        "plan": listing.plan,
        "created_at": isoformat(listing.created_at),
        "test": listing.is_test,
        "admin": listing.is_admin,
        "revoked": listing.revoked_at is not None,
        "revoked_at": None if listing.revoked_at is None else isoformat(listing.revoked_at),
        "last_used_at": None if listing.last_used_at is None else isoformat(listing.last_used_at),
    }


def issued_view(issued: IssuedKey) -> dict[str, Any]:
    """A new key: the full `key`, shown this once, and its listing fields."""
    assert issued.created_at is not None, "set by create_key"
    return {
        "key": issued.key,
        **key_view(
            KeyListing(
                key_id=issued.key_id,
                display=issued.display,
                name=issued.name,
                account_id=issued.account_id,
                plan=issued.plan,
                balance=issued.credits,
                created_at=issued.created_at,
                revoked_at=None,
                is_test=issued.is_test,
                is_admin=issued.is_admin,
            )
        ),
    }


def page_view(page: KeyPage) -> dict[str, Any]:
    return {
        "keys": [key_view(listing) for listing in page.keys],
        "has_more": page.has_more,
        "next_after": page.keys[-1].key_id if page.has_more else None,
    }


ACCOUNT_EXAMPLE = {
    "account_id": ACCOUNT_ID,
    "plan": "pro",
    "balance": 960,
    "test": False,
    "usage": {
        window: {
            "credits_spent": 40,
            "tasks": {"pending": 0, "processing": 0, "completed": 1, "failed": 1, "cancelled": 0},
        }
        for window in usage.WINDOWS
    },
    "rate_limit": {"limit": 1000, "remaining": 998, "reset": 1764101100},
}


@router.get("/account", responses=answers(ACCOUNT_EXAMPLE))
async def account(
    request: Request,
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
) -> JSONResponse:
    """Plan, balance, the account's per-minute limit and what remains of it, and
    credits spent and tasks by status over the last 24 hours and 30 days."""
    summary: dict[str, Any] = await usage.account_summary(svc.db, caller)
    state = getattr(request.state, "rate_limit", None)
    summary["rate_limit"] = (
        None
        if state is None
        else {"limit": state.limit, "remaining": state.remaining, "reset": state.reset_at}
    )
    return success(summary)


LEDGER_EXAMPLE = {
    "entries": [
        {
            "id": 412,
            "kind": "refund",
            "amount": 40,
            "balance_after": 960,
            "task_id": TASK_ID,
            "note": "",
            "created_at": "2026-11-25T20:01:10Z",
        },
        {
            "id": 407,
            "kind": "debit",
            "amount": -40,
            "balance_after": 920,
            "task_id": TASK_ID,
            "note": "",
            "created_at": "2026-11-25T20:00:00Z",
        },
    ],
    "has_more": True,
    "next_after": 407,
}


@router.get(
    "/account/ledger",
    responses=answers(LEDGER_EXAMPLE, InvalidRequest("The limit parameter must be valid")),
)
async def ledger(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    limit: LIMIT = 20,
    after: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**63 - 1,
            description="next_after of the previous page",
            openapi_examples=examples(407),
        ),
    ] = None,
) -> JSONResponse:
    """Every grant, debit and refund with the balance after it, newest first."""
    page = await usage.ledger_page(svc.db, caller, limit=limit, after=after)
    next_after = page.entries[-1]["id"] if page.has_more else None
    return success({"entries": page.entries, "has_more": page.has_more, "next_after": next_after})


# -- the account's own keys ------------------------------------------------------------


@router.get(
    "/keys",
    tags=["keys"],
    responses=answers(
        {"keys": [KEY_EXAMPLE], "has_more": False, "next_after": None}, BAD_KEY_CURSOR
    ),
)
async def list_keys(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    limit: LIMIT = 20,
    after: KEY_CURSOR = None,
) -> JSONResponse:
    """The account's keys, newest first, revoked ones included (a test key sees
    only the test keys). Never the keys themselves: `display` shows their
    prefix and last characters."""
    async with svc.db.read() as session:
        page = await accounts.key_page(
            session,
            account_id=caller.account_id,
            test_only=caller.is_test,
            limit=limit,
            after=after,
        )
    return success(page_view(page))


class NewKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, Field(max_length=200, description="A label, up to 200 characters.")] = ""
    test: StrictBool | None = Field(
        default=None,
        description="A test key (free, preview engine); left out: the calling key's kind. "
        "A test key can create only test keys.",
    )


@router.post(
    "/keys",
    tags=["keys"],
    responses=answers(
        {"key": "imk_7Hq2ZkP4Vd9sWb1nRt6yCe3uLa8mJf5x0Gx9Lm", **KEY_EXAMPLE},
        accounts.KeyLimitReached(
            "The account already has 100 active keys, the most it may hold; revoke one first"
        ),
        Forbidden("A test key can create only test keys"),
    ),
)
async def create_key(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    body: Annotated[
        NewKeyBody | None,
        Body(
            openapi_examples=examples(
                {"name": "staging"}, "A key", test_key={"name": "ci", "test": True}
            )
        ),
    ] = None,
) -> JSONResponse:
    """A new key for the account, on its plan. The full `key` is in this answer
    only: it is stored as a hash and never shown again."""
    chosen = body or NewKeyBody()
    async with svc.db.write() as session:
        issued = await accounts.add_key(
            session,
            caller,
            name=chosen.name,
            test=chosen.test,
            max_keys=svc.settings.account_max_keys,
        )
    return success(issued_view(issued))


@router.delete(
    "/keys/{key_id}",
    tags=["keys"],
    responses=answers(
        {**KEY_EXAMPLE, "revoked": True, "revoked_at": "2026-11-26T09:30:00Z"},
        UNKNOWN_KEY,
        Forbidden("An admin key can be revoked only with an admin key"),
    ),
)
async def revoke_key(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    key_id: KEY_ID_PATH,
) -> JSONResponse:
    """Revoke one of the account's keys, the calling one included. Every API
    process refuses it within IMAGINE_KEY_CACHE_SECONDS (5 s by default).
    Another account's key is answered 404, as a key that does not exist."""
    async with svc.db.write() as session:
        listing = await accounts.revoke_own_key(session, caller, key_id)
    return success(key_view(listing))
