"""Cursor (keyset) pagination over ``(created_at, id)``, newest first by default.

A cursor is opaque to clients: URL-safe base64 of the last item's sort key. A
page is read with ``WHERE (created_at, id) < (:c, :i) ORDER BY created_at DESC,
id DESC LIMIT n + 1``, so deep pages cost what the first one costs (given an
index on ``(…, created_at, id)``) and rows inserted meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from services.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of items and the cursor of the next page (None on the last page)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, item_id: Any) -> str:
    """The opaque cursor pointing just past an item with this sort key."""
    raw = json.dumps([created_at.isoformat(), str(item_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, id_type: Callable[[str], Any] = str) -> tuple[datetime, Any]:
    """The sort key inside ``cursor``; InvalidInput (``invalid_cursor``) if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, item_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(item_id, str):
            raise TypeError("cursor fields are not strings")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, id_type(item_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid; pass a next_cursor as returned",
                           code="invalid_cursor") from exc


def paginate(
    session: Session,
    stmt: Select[Any],
    *,
    created_col: InstrumentedAttribute[Any],
    id_col: InstrumentedAttribute[Any],
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    ascending: bool = False,
) -> Page[Any]:
    """Run ``stmt`` (filters applied, no ORDER BY/LIMIT) one page at a time by (created, id).

    Items are ORM objects when ``stmt`` selects one entity, else rows; either way each
    item must expose ``created_col`` and ``id_col`` by their attribute names.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    key = tuple_(created_col, id_col)
    if cursor is not None:
        at, item_id = decode_cursor(cursor, id_col.type.python_type)
        stmt = stmt.where(key > tuple_(at, item_id) if ascending else key < tuple_(at, item_id))
    if ascending:
        stmt = stmt.order_by(created_col.asc(), id_col.asc())
    else:
        stmt = stmt.order_by(created_col.desc(), id_col.desc())
    result = session.execute(stmt.limit(limit + 1))
    descriptions = stmt.column_descriptions
    one_entity = len(descriptions) == 1 and isinstance(descriptions[0]["expr"], type)
    rows: Sequence[Any] = result.scalars().all() if one_entity else result.all()
    items = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))
    return Page(items=items, next_cursor=next_cursor)


def newest_first(
    session: Session,
    model: Any,
    *,
    equal: dict[InstrumentedAttribute[Any], Any],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Any]:
    """Rows of ``model`` newest first: each column of ``equal`` matching its value (``None``
    means no filter) and ``created_at`` in ``[since, until)``."""
    stmt: Select[Any] = select(model)
    for column, value in equal.items():
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(model.created_at >= since)
    if until is not None:
        stmt = stmt.where(model.created_at < until)
    return paginate(
        session, stmt, created_col=model.created_at, id_col=model.id, limit=limit, cursor=cursor
    )
