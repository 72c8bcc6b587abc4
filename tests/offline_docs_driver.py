"""Opens `/docs` in Chromium against a real `imagine serve` and prints, as one
JSON line, what the page did: every request, console message, page error and
CSP violation, and whether the API reference rendered.

Run by tests/test_api_docs_offline.py inside a network namespace that has only
loopback, so anything the page needs from the internet simply fails.
Usage: offline_docs_driver.py WORKDIR
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from browser import RECORD_VIOLATIONS, launch
from processes import ServeProcess

GENERATE = '.opblock-post .opblock-summary-path[data-path="/v1/generate"]'


def internet_unreachable() -> str | None:
    """Why a public address cannot be reached from here, or None if it can."""
    with socket.socket() as sock:
        sock.settimeout(3)
        try:
            sock.connect(("1.1.1.1", 443))
        except OSError as error:
            return str(error)
    return None


def drive(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {
        "requests": [],
        "console": [],
        "page_errors": [],
        "violations": [],
        "rendered": False,
        "expanded": False,
        "error": None,
    }
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.on(
                "console",
                lambda message: seen["console"].append(
                    {"type": message.type, "text": message.text}
                ),
            )
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.add_init_script(RECORD_VIOLATIONS)
            try:
                page.goto(f"{url}/docs")
                operation = page.locator(GENERATE)
                operation.wait_for(state="visible", timeout=30_000)
                seen["rendered"] = True
                # Expanding renders the request body, examples and responses
                # (syntax highlighting and all), where inline styles would show.
                operation.click()
                page.locator(".opblock-post.is-open .opblock-body .responses-wrapper").wait_for(
                    state="visible", timeout=30_000
                )
                seen["expanded"] = True
                page.wait_for_timeout(500)  # late console messages
            except PlaywrightError as error:
                seen["error"] = str(error)
            seen["violations"] = page.evaluate("window.__violations || []")
        finally:
            browser.close()
    return seen


def main(workdir: Path) -> None:
    offline = internet_unreachable()
    server = ServeProcess(workdir / "data", "--workers", "0")
    try:
        result = {"origin": server.url, "offline": offline, **drive(server.url)}
    finally:
        server.terminate()
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
