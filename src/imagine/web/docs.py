"""The API reference at `/docs`: Swagger UI from the vendored files under
`/static/`, never a CDN, so it renders on a machine without internet and under
the pages' strict policy (no inline script or style). `/redoc` points to it:
one reference rather than two."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from imagine.web.assets import STATIC_PATH
from imagine.web.headers import page_headers

DOCS_PATH = "/docs"
SWAGGER_UI = f"{STATIC_PATH}/vendor/swagger-ui"

# The empty `data:` icon keeps the browser from asking for /favicon.ico, whose
# 404 would be an error in the console.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} API reference</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}{swagger_ui}/swagger-ui.css">
<link rel="stylesheet" href="{root}{static}/docs.css">
<script src="{root}{swagger_ui}/swagger-ui-bundle.js" defer></script>
<script src="{root}{static}/docs.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    """The prefix a proxy serves the service under (the ASGI `root_path`), or ''."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(DOCS_PATH)
async def api_reference(request: Request) -> HTMLResponse:
    page = PAGE.format(
        title=escape(request.app.title),
        root=escape(_root(request)),
        swagger_ui=SWAGGER_UI,
        static=STATIC_PATH,
        openapi=escape(request.app.openapi_url),
    )
    return HTMLResponse(page, headers=page_headers())


@router.get("/redoc")
async def redoc(request: Request) -> RedirectResponse:
    return RedirectResponse(_root(request) + DOCS_PATH, headers=page_headers())
