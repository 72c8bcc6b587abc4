"""Signing in with an API key, and out.

A wrong key, a revoked key and a malformed one all get the same sentence,
and attempts are counted per client address in the same rate-limit store
as the API (so every API process shares the count)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from imagine.accounts import service as accounts
from imagine.console.context import (
    COOKIE,
    SECURE_COOKIE,
    ConsoleRoute,
    checked_form,
    console_of,
    is_https,
    local_path,
    read_form,
    require_same_origin,
    session_token,
    signed_in,
    text_field,
)
from imagine.console.i18n import N_
from imagine.errors import RateLimited

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

WRONG_KEY = N_("That key was not accepted. Check it and try again.")


@router.get("/signin")
async def signin_page(request: Request, next: str | None = None) -> Response:
    console = console_of(request)
    if await console.sessions.resolve(session_token(request)) is not None:
        return RedirectResponse(local_path(next), status_code=303)
    return console.render(request, "signin.html", {"next": local_path(next), "error": None})


@router.post("/signin")
async def signin(request: Request) -> Response:
    console = console_of(request)
    require_same_origin(request)
    client = request.client.host if request.client else "unknown"
    state = await console.svc.limiter.hit(
        f"console-signin:{client}", console.svc.settings.console_signins_per_minute
    )
    if not state.allowed:
        wait = state.headers()["Retry-After"]
        raise RateLimited(
            f"Too many sign-in attempts; try again in {wait} seconds",
            headers={"Retry-After": wait},
        )
    form = await read_form(request, max_bytes=16 * 1024)
    target = local_path(text_field(form, "next"))
    principal = await accounts.authenticate(console.svc.db, text_field(form, "api_key").strip())
    if principal is None:
        return console.render(
            request, "signin.html", {"next": target, "error": WRONG_KEY}, status_code=401
        )
    token = await console.sessions.open(principal)
    response = RedirectResponse(target, status_code=303)
    secure = is_https(request)
    response.set_cookie(
        SECURE_COOKIE if secure else COOKIE,
        token,
        max_age=console.svc.settings.console_max_seconds,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    signed = await signed_in(request)
    await checked_form(request, signed)
    token = session_token(request)
    if token:
        await console_of(request).sessions.close(token)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SECURE_COOKIE if is_https(request) else COOKIE, path="/")
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    return response
