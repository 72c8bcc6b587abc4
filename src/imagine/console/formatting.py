"""How the console writes times, amounts and statuses (Jinja2 filters).

Times are shown as relative text with the exact UTC time beside them (a
`<time>` element's `title`), so a reader in any zone knows both."""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
from markupsafe import Markup, escape

from imagine.ids import utcnow

_UNITS = ((86400 * 365, "y"), (86400 * 30, "mo"), (86400, "d"), (3600, "h"), (60, "min"))


def ago(moment: datetime, now: datetime | None = None) -> str:
    seconds = int(((now or utcnow()) - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 45:
        return "just now"
    for size, unit in _UNITS:
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "1 min ago"


def utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def time_tag(moment: datetime | str | None) -> Markup:
    """`<time datetime="…" title="… UTC">3 min ago</time>`; a dash for no time.
    Takes a datetime or the API's `2026-01-31T12:00:00Z` text."""
    if moment is None:
        return Markup("—")
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, utc(moment), ago(moment))


def number(value: int) -> str:
    return f"{value:,}"


def signed_number(value: int) -> str:
    return f"{value:+,}"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    whole = round(value)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def status_badge(status: str) -> Markup:
    """A status as text and colour (never colour alone)."""
    return Markup('<span class="badge badge-{0}">{0}</span>').format(escape(status))


def pretty_json(value: object) -> str:
    """JSON for a `<pre>`: indented, non-ASCII kept, escaped by the template."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def install(environment: jinja2.Environment) -> None:
    environment.filters.update(
        ago=ago,
        utc=utc,
        time=time_tag,
        number=number,
        signed=signed_number,
        seconds=seconds,
        badge=status_badge,
        pretty_json=pretty_json,
    )
