"""The security headers every answer carries, as bytes ready to send.

`nosniff` keeps a browser from reading a body as another type than the one
declared (a JSON error or a video rendered as HTML); `no-referrer` keeps the
signed file URLs, whose query is a credential, out of the `Referer` of any
page reached from them. Appended where answers are built (the JSON response
class, the file response, the server's own refusals), never by a wrapper
around every request.
"""

from __future__ import annotations

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
