"""The console's languages: English (the source) and Korean.

Messages live in gettext catalogs under `locale/<lang>/LC_MESSAGES/console.po`,
compiled in memory at start-up (Babel), so the repository holds only text. A
browser gets the language its `imagine_lang` cookie names, else the best
match of its `Accept-Language`, else English. The API itself never changes
language: its sentences are the contract's.
"""

from __future__ import annotations

import gettext
import io
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from starlette.requests import Request

LANGUAGES = ("en", "ko")
DEFAULT = "en"
COOKIE = "imagine_lang"
LOCALE_DIR = Path(__file__).parent / "locale"
NAMES = {"en": "English", "ko": "한국어"}


def N_(message: str) -> str:  # the conventional name extractors look for
    """Marks a message for the catalog; it is translated where it is shown."""
    return message


def catalog_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / "console.po"


def load_translations(language: str) -> gettext.NullTranslations:
    if language == DEFAULT:
        return gettext.NullTranslations()
    with catalog_path(language).open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def _accepted(header: str) -> list[str]:
    """Language tags of an Accept-Language header, best first (q=0 dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and quality > 0:
            ranked.append((-quality, index, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(request: Request) -> str:
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGUAGES:
        return chosen
    for tag in _accepted(request.headers.get("accept-language", "")):
        try:
            language = Locale.parse(tag.replace("-", "_")).language
        except (UnknownLocaleError, ValueError):
            continue
        if language in LANGUAGES:
            return language
    return DEFAULT


def source_messages() -> dict[str, list[tuple[str, int]]]:
    """Every message the console's templates and code mark, with where it is
    used (for the catalog's upkeep and the test that it is complete)."""
    from babel.messages.extract import extract_from_dir

    root = Path(__file__).parent
    found: dict[str, list[tuple[str, int]]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(root),
        method_map=[("templates/**.html", "jinja2"), ("**.py", "python")],
        options_map={
            "templates/**.html": {
                "extensions": "jinja2.ext.i18n",
                "trim_blocks": "true",
                "lstrip_blocks": "true",
            }
        },
        keywords={"_": None, "gettext": None, "N_": None},
    ):
        if isinstance(message, str) and message:
            found.setdefault(message, []).append((filename, lineno))
    return found


def update_catalog(language: str) -> list[str]:
    """Bring `language`'s catalog in line with the sources: new messages are
    added untranslated, gone ones dropped, translations kept. Returns the
    messages that still need a translation."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import write_po

    template = Catalog(
        project="Imagine console", locale=language, fuzzy=False, msgid_bugs_address=""
    )
    for message, places in source_messages().items():
        template.add(message, locations=places)
    path = catalog_path(language)
    if path.exists():
        with path.open("rb") as source:
            catalog = read_po(source, locale=language)
        catalog.update(template, no_fuzzy_matching=True, update_header_comment=False)
        catalog.fuzzy = False
    else:
        catalog = template
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        write_po(out, catalog, width=100, sort_output=True, ignore_obsolete=True)
    return [str(m.id) for m in catalog if m.id and not m.string]
