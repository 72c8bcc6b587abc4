"""`/v1/admin/moderation`: the record of refused content, for admin keys only.

Each refusal says which check refused which part of which task, by which rule
and score; an operator marks false positives to tune the policy by. Clients
never see any of it: their task says only the contract's sentence.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from imagine.accounts.admin_endpoints import NOT_ADMIN, AdminRoute
from imagine.accounts.endpoints import LIMIT
from imagine.accounts.service import Principal
from imagine.api.envelope import success
from imagine.api.openapi import answers, examples
from imagine.api.services import Services, principal, services
from imagine.api.text import Text
from imagine.errors import InvalidRequest
from imagine.moderation import records
from imagine.moderation.records import UNKNOWN_REFUSAL, RefusalListing
from imagine.tasks.endpoints import bearer
from imagine.tasks.service import isoformat

router = APIRouter(
    prefix="/v1/admin/moderation",
    dependencies=[Depends(bearer)],
    tags=["admin"],
    route_class=AdminRoute,
)

REFUSAL_ID = "mod_4e1a7c2b9d3f8a6e0b5c1d2f"
REFUSAL_EXAMPLE: dict[str, Any] = {
    "refusal_id": REFUSAL_ID,
    "task_id": "task_6b1f2c9e0a4d8e7f5a3b1c2d",
    "account_id": "acct_5f0c3e9a2b7d4c1e8f6a0b3d",
    "created_at": "2026-12-08T10:15:00Z",
    "is_test": False,
    "mode": "normal",
    "engine": "diffusers",
    "stage": "input",
    "check": "words",
    "subject": "prompt",
    "rule": "explicit: naked",
    "score": None,
    "prompt": "a n a k e d figure on a beach",
    "false_positive": False,
    "reviewed_at": None,
    "reviewed_by": None,
    "review_note": "",
}


def refusal_view(listing: RefusalListing) -> dict[str, Any]:
    data = dict(vars(listing))
    data["created_at"] = isoformat(listing.created_at)
    data["reviewed_at"] = None if listing.reviewed_at is None else isoformat(listing.reviewed_at)
    return data


@router.get(
    "",
    responses=answers(
        {"refusals": [REFUSAL_EXAMPLE], "has_more": False, "next_after": None},
        InvalidRequest("The after parameter must be a refusal id from a previous page"),
        NOT_ADMIN,
    ),
)
async def list_refusals(
    svc: Annotated[Services, Depends(services)],
    limit: LIMIT = 20,
    after: Annotated[
        Text | None,
        Query(description="next_after of the previous page", openapi_examples=examples(REFUSAL_ID)),
    ] = None,
    false_positive: Annotated[
        bool | None,
        Query(
            description="Only refusals marked (true) or not marked (false) false positives",
            openapi_examples=examples(True),
        ),
    ] = None,
) -> JSONResponse:
    """Refused tasks, newest first: the stage (input, output, or the engine's own
    verdict), the check, what it looked at, the rule and score that decided,
    the task's prompt, and the operator's review."""
    async with svc.db.read() as session:
        page = await records.refusal_page(
            session, limit=limit, after=after, false_positive=false_positive
        )
    return success(
        {
            "refusals": [refusal_view(listing) for listing in page.refusals],
            "has_more": page.has_more,
            "next_after": page.next_after,
        }
    )


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    false_positive: StrictBool = Field(description="true: the content was acceptable.")
    note: Annotated[
        Text, Field(max_length=500, description="Why, for whoever tunes the policy.")
    ] = ""


@router.post(
    "/{refusal_id}/review",
    responses=answers(
        {
            **REFUSAL_EXAMPLE,
            "false_positive": True,
            "reviewed_at": "2026-12-08T11:00:00Z",
            "reviewed_by": "key_2c8e4a0f6b1d3e5a7c9f0b2d",
            "review_note": "a beach scene, nothing shown",
        },
        NOT_ADMIN,
        UNKNOWN_REFUSAL,
    ),
)
async def review_refusal(
    svc: Annotated[Services, Depends(services)],
    caller: Annotated[Principal, Depends(principal)],
    refusal_id: Annotated[
        Text, Path(description="A refusal_id", openapi_examples=examples(REFUSAL_ID))
    ],
    body: Annotated[
        ReviewBody,
        Body(openapi_examples=examples({"false_positive": True, "note": "a beach scene"})),
    ],
) -> JSONResponse:
    """Mark a refusal as a false positive, or take the mark back. The record is
    kept for tuning; the task is not run again."""
    async with svc.db.write() as session:
        listing = await records.review_refusal(
            session,
            refusal_id,
            false_positive=body.false_positive,
            note=body.note,
            reviewer=caller.key_id,
        )
    return success(refusal_view(listing))
