"""Security headers for HTML pages (the console and `/docs`).

Every script and stylesheet is a file under `/static/`, so the policy needs
neither `unsafe-inline` nor `unsafe-eval`: an injected `<script>` or inline
handler does not run even if escaping were ever missed. Videos may come from
the storage's public origin (S3 or a CDN), so `media-src` names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


def origin_of(url: str | None) -> str | None:
    """`scheme://host[:port]` of an absolute URL, or None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(media_origins: Iterable[str] = ()) -> str:
    media = " ".join(["'self'", *sorted(set(media_origins))])
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"media-src {media}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def page_headers(media_origins: Iterable[str] = (), *, secret: bool = False) -> dict[str, str]:
    """Headers for one HTML answer; `secret` pages (a key or signing secret shown
    once, anything behind a session) are never stored by a cache or the browser."""
    headers = {
        "Content-Security-Policy": content_security_policy(media_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if secret:
        headers["Cache-Control"] = "no-store"
    return headers
