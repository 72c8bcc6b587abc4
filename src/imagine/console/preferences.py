"""A browser's language choice, remembered in a cookie (a preference, not
account state: it works signed in or out)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from imagine.console import i18n
from imagine.console.context import ConsoleRoute, local_path
from imagine.errors import NotFound

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
YEAR = 365 * 24 * 3600


@router.get("/language/{language}")
async def choose_language(request: Request, language: str, next: str | None = None) -> Response:
    if language not in i18n.LANGUAGES:
        raise NotFound("No such language")
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(i18n.COOKIE, language, max_age=YEAR, path="/", samesite="strict")
    return response
