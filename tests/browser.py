"""Debian's Chromium for the browser tests: where it is, how it is launched, and
a page script that keeps every Content-Security-Policy violation the browser
reports. Never `playwright install`: the system's Chromium is what runs."""

from __future__ import annotations

import os
import shutil

import pytest
from playwright.sync_api import Browser, Playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
# Runs before the page's own scripts (and outside its CSP): keeps every
# violation the browser reports, whether or not it also logs it.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
    window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


def require_chromium() -> None:
    """Skips the calling test module where Chromium is missing (never in CI)."""
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip("Chromium is not installed (scripts/test installs it)", allow_module_level=True)


def launch(playwright: Playwright) -> Browser:
    """A headless Chromium with nothing running in the background."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
