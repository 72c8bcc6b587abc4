"""What every string a client sends must be: text every layer below can hold.

JSON can spell strings that are not text: `"\\ud800"` is a lone surrogate,
which Python's `json` accepts but UTF-8 (SQLite, orjson, every HTTP client)
cannot encode, and `"\\u0000"` is NUL, which PostgreSQL refuses in text.
Either, once accepted, fails far from where it came in: a query answers 500,
or a stored task can no longer be shown. So each string field, query and
path parameter is declared `Text`, refused at the edge with a 400 naming it,
and the FastAPI routes and the fast paths share the one rule.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, StrictStr
from pydantic_core import PydanticCustomError

TEXT_ERROR = "unicode_text"
"""The pydantic error type of a string that is not `Text` (see `validation_message`)."""

TEXT_RULE = "valid Unicode text (no NUL characters or unpaired surrogates)"

_SURROGATE = re.compile("[\ud800-\udfff]")


def is_text(value: str) -> bool:
    """True for Unicode scalar values other than NUL (ASCII is checked in O(1))."""
    if "\x00" in value:
        return False
    return value.isascii() or _SURROGATE.search(value) is None


def _checked(value: str) -> str:
    if not is_text(value):
        raise PydanticCustomError(TEXT_ERROR, "String must be " + TEXT_RULE)
    return value


Text = Annotated[StrictStr, AfterValidator(_checked)]
"""A request string: strict (no coercion) and `is_text`."""


def scrub(content: Any) -> Any:
    """`content` with every lone surrogate replaced by U+FFFD, for rendering data
    stored before `Text` refused them (orjson cannot encode them)."""
    if isinstance(content, str):
        return _SURROGATE.sub("\ufffd", content)
    if isinstance(content, dict):
        return {scrub(key): scrub(value) for key, value in content.items()}
    if isinstance(content, list | tuple):
        return [scrub(item) for item in content]
    return content
