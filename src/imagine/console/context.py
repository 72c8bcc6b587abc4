"""What every console route shares: the session guard, CSRF and origin checks,
bounded form parsing, and rendering a template into a page with its headers.

Routes use `ConsoleRoute`, which turns the service errors (`ApiError`) into
HTML pages with the same status, and a missing session into a trip to the
sign-in page, so a route reads as its happy path.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData

from imagine import __version__
from imagine.api.services import Services
from imagine.console import formatting, i18n
from imagine.console.i18n import N_
from imagine.console.sessions import SessionStore, SignedIn
from imagine.errors import ApiError, Forbidden, PayloadTooLarge
from imagine.web.headers import origin_of, page_headers

TEMPLATES = Path(__file__).parent / "templates"
COOKIE = "imagine_session"
SECURE_COOKIE = "__Host-imagine_session"
"""Over https the cookie is `Secure` and host-only (the `__Host-` prefix)."""
THEME_COOKIE = "imagine_theme"
THEMES = ("auto", "light", "dark")


class SignInRequired(Exception):
    """No live session: the route sends the browser to the sign-in page."""


@dataclass
class Console:
    svc: Services
    sessions: SessionStore
    templates: dict[str, jinja2.Environment]
    """One environment per language, its catalog and formats installed."""
    media_origins: tuple[str, ...]

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status_code: int = 200,
        signed: SignedIn | None = None,
    ) -> HTMLResponse:
        theme = request.cookies.get(THEME_COOKIE, "auto")
        body = (
            self.templates[i18n.negotiate(request)]
            .get_template(template)
            .render(
                request=request,
                signed=signed,
                theme=theme if theme in THEMES else "auto",
                path=request.url.path,
                version=__version__,
                **context,
            )
        )
        return HTMLResponse(
            body, status_code, headers=page_headers(self.media_origins, secret=True)
        )

    def base_url(self, request: Request) -> str:
        return self.svc.base_url(request)


def build_console(svc: Services, secret: bytes) -> Console:
    settings = svc.settings
    origins = {origin_of(settings.public_url), svc.storage.media_origin}
    return Console(
        svc=svc,
        sessions=SessionStore(
            svc.db,
            secret,
            idle_seconds=settings.console_idle_seconds,
            absolute_seconds=settings.console_max_seconds,
        ),
        templates={language: _environment(language) for language in i18n.LANGUAGES},
        media_origins=tuple(sorted(origin for origin in origins if origin)),
    )


def _environment(language: str) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    translations = i18n.load_translations(language)
    environment.install_gettext_translations(  # type: ignore[attr-defined]
        translations, newstyle=True
    )
    formatting.install(environment, language, translations)
    return environment


def console_of(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def session_token(request: Request) -> str | None:
    return request.cookies.get(SECURE_COOKIE if is_https(request) else COOKIE)


async def signed_in(request: Request) -> SignedIn:
    """The request's live session, or `SignInRequired`."""
    signed = await console_of(request).sessions.resolve(session_token(request))
    if signed is None:
        raise SignInRequired
    return signed


def require_same_origin(request: Request) -> None:
    """A state-changing request must come from our own pages: browsers say where
    a request comes from in `Sec-Fetch-Site`, older ones in `Origin`."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise Forbidden(N_("Cross-site request refused"))
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != origin_of(str(request.base_url)):
        raise Forbidden(N_("Cross-site request refused"))


async def read_form(request: Request, *, max_bytes: int, max_files: int = 0) -> FormData:
    """The request's form, refused before parsing when larger than `max_bytes`
    (every browser sends a Content-Length with a form)."""
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        raise PayloadTooLarge(N_("A form must be sent with its Content-Length")) from None
    if length > max_bytes:
        raise PayloadTooLarge(f"Request body larger than {max_bytes} bytes")
    return await request.form(max_files=max_files, max_fields=100, max_part_size=max_bytes)


async def checked_form(
    request: Request, signed: SignedIn, *, max_bytes: int = 64 * 1024, max_files: int = 0
) -> FormData:
    """The form of a state-changing request of a signed-in browser, after the
    origin check and the CSRF token (a hidden field, or htmx's header)."""
    require_same_origin(request)
    form = await read_form(request, max_bytes=max_bytes, max_files=max_files)
    sent = request.headers.get("x-csrf-token") or form.get("csrf_token")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, signed.csrf_token):
        raise Forbidden(
            N_("The form has expired or did not come from this console; reload the page")
        )
    return form


def text_field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value if isinstance(value, str) else default


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def local_path(target: str | None, default: str = "/") -> str:
    """Where to go after signing in: only a path on this site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def see_other(request: Request, url: str) -> Response:
    """After a POST: a redirect the browser follows with GET (htmx: `HX-Redirect`)."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


class ConsoleRoute(APIRoute):
    """A console route: service errors become pages, a missing session a redirect."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_page(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                target = request.url.path
                if request.method == "GET" and not is_htmx(request):
                    return RedirectResponse(f"/signin?next={target}", status_code=303)
                return see_other(request, "/signin")
            except ApiError as exc:
                page = console_of(request).render(
                    request,
                    "error.html",
                    {"status": exc.status, "message": exc.message},
                    status_code=exc.status,
                    signed=None,
                )
                page.headers.update(exc.headers)
                return page

        return as_page
