"""Pages behind a keyset cursor, for every listing the API offers.

Rows are ordered by (created_at, id), newest first unless a listing asks for
oldest first, and the cursor is the last id of the previous page, so rows
inserted meanwhile land before the cursor (newest first) or after the last
page (oldest first) and a page never repeats or skips one; no page counts or
skips rows (each is one index range, however long the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import ColumnElement, Row, Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from imagine.errors import InvalidRequest
from imagine.ids import has_id_shape

Columns = TypeVarTuple("Columns")


async def keyset_page(
    session: AsyncSession,
    query: Select[*Columns],
    *,
    created: InstrumentedAttribute[Any],
    ident: InstrumentedAttribute[str],
    id_prefix: str,
    noun: str,
    scope: Sequence[ColumnElement[bool]] = (),
    after: str | None,
    limit: int,
    oldest_first: bool = False,
) -> tuple[list[Row[*Columns]], bool]:
    """Up to `limit` rows of `query` after the cursor, newest first (or with
    `oldest_first` the same range walked the other way), and whether more follow.

    The cursor must be an id (`id_prefix`) of a row within `scope` (the
    caller's own rows): anything else is a 400 naming the `noun`.
    """
    if after is not None:
        anchor = None
        if has_id_shape(id_prefix, after):
            anchor = await session.scalar(select(created).where(ident == after, *scope))
        if anchor is None:
            raise InvalidRequest(f"The after parameter must be {noun} id from a previous page")
        position, cursor = tuple_(created, ident), tuple_(anchor, after)
        query = query.where(position > cursor if oldest_first else position < cursor)
    order = (created.asc(), ident.asc()) if oldest_first else (created.desc(), ident.desc())
    rows = list(await session.execute(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
