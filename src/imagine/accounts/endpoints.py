"""`GET /v1/account` and `GET /v1/account/ledger`: balance, spend and history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from imagine.accounts import usage
from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.services import Services, principal, services
from imagine.tasks.endpoints import ERRORS, bearer

router = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], tags=["account"])


@router.get("/account", responses=ERRORS)
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


@router.get("/account/ledger", responses=ERRORS)
async def ledger(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="next_after of the previous page")
    ] = None,
) -> JSONResponse:
    """Every grant, debit and refund with the balance after it, newest first."""
    page = await usage.ledger_page(svc.db, caller, limit=limit, after=after)
    next_after = page.entries[-1]["id"] if page.has_more else None
    return success({"entries": page.entries, "has_more": page.has_more, "next_after": next_after})
