"""The web console at `/`: sign in with an API key, try prompts, watch tasks,
manage keys, usage and webhooks; operator pages for admin keys.

Server-rendered (Jinja2) with htmx for the live parts, served by the API
process itself. Every action calls the same service functions as `/v1`.
"""

from __future__ import annotations

from fastapi import FastAPI

from imagine.api.services import Services
from imagine.console import account_pages, operator_pages, preferences, signin, task_pages
from imagine.console.context import build_console
from imagine.server_secret import server_secret


def install_console(app: FastAPI, svc: Services) -> None:
    app.state.console = build_console(svc, server_secret(svc.settings))
    for module in (signin, preferences, account_pages, task_pages, operator_pages):
        app.include_router(module.router)
