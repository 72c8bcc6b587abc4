"""How the console writes times, amounts and statuses (Jinja2 filters), in the
page's language.

Times are shown as relative text ("3 minutes ago", "3분 전") with the exact
UTC time in the `<time>` element's `title`, so a reader in any zone knows
both. Status values stay the API's words in `data-*` attributes; what is
shown is their translation."""

from __future__ import annotations

import gettext
import json
from datetime import datetime, timedelta

import jinja2
from babel.dates import format_timedelta
from babel.numbers import format_decimal
from markupsafe import Markup

from imagine.console.i18n import N_
from imagine.ids import utcnow

STATUS_LABELS = {
    "pending": N_("pending"),
    "processing": N_("processing"),
    "completed": N_("completed"),
    "failed": N_("failed"),
    "cancelled": N_("cancelled"),
    "delivering": N_("delivering"),
    "delivered": N_("delivered"),
}


def utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _moment(value: datetime | str) -> datetime:
    """A datetime, or the API's `2026-01-31T12:00:00Z` text."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


class Formats:
    """The filters for one language."""

    def __init__(self, language: str, translations: gettext.NullTranslations) -> None:
        self.language = language
        self.translations = translations

    def ago(self, moment: datetime | str, now: datetime | None = None) -> str:
        delta = _moment(moment) - (now or utcnow())
        return format_timedelta(delta, add_direction=True, locale=self.language)

    def time_tag(self, moment: datetime | str | None) -> Markup:
        """`<time datetime="…" title="… UTC">3 minutes ago</time>`; a dash for none."""
        if moment is None:
            return Markup("—")
        exact = _moment(moment)
        return Markup('<time datetime="{}" title="{}">{}</time>').format(
            exact.strftime("%Y-%m-%dT%H:%M:%SZ"), utc(exact), self.ago(exact)
        )

    def number(self, value: int) -> str:
        return format_decimal(value, locale=self.language)

    def signed(self, value: int) -> str:
        return ("+" if value > 0 else "") + self.number(value)

    def seconds(self, value: float | None) -> str:
        if value is None:
            return "—"
        return format_timedelta(
            timedelta(seconds=round(value)), threshold=1.2, format="short", locale=self.language
        )

    def badge(self, status: str) -> Markup:
        """A status as text and colour (never colour alone)."""
        label = self.translations.gettext(STATUS_LABELS.get(status, status))
        return Markup('<span class="badge badge-{}">{}</span>').format(status, label)


def pretty_json(value: object) -> str:
    """JSON for a `<pre>`: indented, non-ASCII kept, escaped by the template."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def install(
    environment: jinja2.Environment, language: str, translations: gettext.NullTranslations
) -> None:
    formats = Formats(language, translations)
    environment.filters.update(
        utc=utc,
        time=formats.time_tag,
        number=formats.number,
        signed=formats.signed,
        seconds=formats.seconds,
        badge=formats.badge,
        pretty_json=pretty_json,
        # A message known only at run time (no %-formatting, unlike `_`): the
        # console's own sentences are in the catalog, the API's stay English.
        translate=translations.gettext,
    )
    environment.globals["language"] = language
