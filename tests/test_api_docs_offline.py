"""`/docs` renders the API reference with the machine offline: `imagine serve`
and Chromium run in a network namespace that has only loopback, and the page
must load nothing from another origin, log no console error (Chromium logs CSP
violations as errors) and throw no page error. The page itself has no inline
script or style and names no CDN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from browser import require_chromium
from conftest import RunningServer

require_chromium()

DRIVER = Path(__file__).with_name("offline_docs_driver.py")
# A new network namespace holds only a loopback interface, down until raised.
OFFLINE = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def offline_or_skip() -> list[str]:
    """The command prefix that runs a program offline; skips (outside CI) where
    this machine does not allow new network namespaces."""
    try:
        probe = subprocess.run([*OFFLINE, "true"], capture_output=True, text=True, timeout=30)
        reason = probe.stderr.strip() or f"exit status {probe.returncode}"
        allowed = probe.returncode == 0
    except FileNotFoundError as error:
        reason, allowed = str(error), False
    if not allowed:
        if os.environ.get("CI"):
            pytest.fail(f"cannot make a network namespace: {reason}")
        pytest.skip(f"cannot make a network namespace (needs unshare, ip and root): {reason}")
    return OFFLINE


def test_docs_render_the_api_reference_offline(tmp_path: Path) -> None:
    run = subprocess.run(
        [*offline_or_skip(), sys.executable, str(DRIVER), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    detail = json.dumps(result, indent=1)

    assert result["offline"], f"the driver could reach the internet: {detail}"
    assert result["rendered"] and result["expanded"], detail
    origin = urlsplit(result["origin"])
    elsewhere = [
        url for url in result["requests"] if urlsplit(url)[:2] != (origin.scheme, origin.netloc)
    ]
    assert elsewhere == [], detail
    paths = {urlsplit(url).path for url in result["requests"]}
    assert {
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/docs.js",
        "/static/docs.css",
        "/openapi.json",
    } <= paths, detail
    errors = [message for message in result["console"] if message["type"] == "error"]
    assert errors == [], detail
    assert result["page_errors"] == [], detail
    assert result["violations"] == [], detail


class PageParts(HTMLParser):
    """What an HTML page would run or load: script, stylesheet and inline parts."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and not found.get("src"):
            self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        self.inline += [f"{tag} {name}=" for name in found if name == "style" or name[:2] == "on"]
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_docs_page_has_no_inline_code_and_names_no_other_origin(
    sqlite_server: Callable[..., RunningServer],
) -> None:
    server = sqlite_server(workers=0)
    with server.client() as anonymous:
        page = anonymous.get("/docs")
        redoc = anonymous.get("/redoc")
        init = anonymous.get("/static/docs.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy, policy
    assert page.headers["x-content-type-options"] == "nosniff"

    parts = PageParts()
    parts.feed(page.text)
    assert parts.inline == [], page.text
    assert "cdn." not in page.text and "https://" not in page.text, page.text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in parts.urls, page.text
    for url in parts.urls:
        assert url.startswith("/") or url == "data:,", url
    assert 'data-openapi-url="/openapi.json"' in page.text

    assert (redoc.status_code, redoc.headers["location"]) == (307, "/docs")
    assert init.status_code == 200 and "javascript" in init.headers["content-type"]
