"""Cursor (keyset) pagination: the one helper behind every list of the API.

A list is ordered by a key whose last column is unique (``(created_at, id)``, or the id
alone), newest first by default. A page is read with ``WHERE (k1, k2) < (:v1, :v2) ORDER
BY k1 DESC, k2 DESC LIMIT n + 1``, so deep pages cost what the first one costs (given an
index on the key) and rows inserted meanwhile never shift a page. A cursor is opaque to
clients: URL-safe base64 of the last item's key, as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
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


def encode_cursor(*key: Any) -> str:
    """The opaque cursor pointing just past an item with this sort key."""
    values = [v.isoformat() if isinstance(v, datetime) else str(v) for v in key]
    raw = json.dumps(values, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[type]) -> tuple[Any, ...]:
    """The sort key inside ``cursor``, one value of each of ``types``; InvalidInput
    (``invalid_cursor``) if it is not a cursor of this list."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("not a key of this list")
        return tuple(_value(raw, kind) for raw, kind in zip(values, types, strict=True))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid; pass a next_cursor as returned",
                           code="invalid_cursor") from exc


def _value(raw: object, kind: type) -> Any:
    if not isinstance(raw, str):
        raise TypeError("cursor fields are strings")
    if kind is datetime:
        at = datetime.fromisoformat(raw)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at
    if kind is uuid.UUID:
        return uuid.UUID(raw)
    return kind(raw)


def paginate(
    session: Session,
    stmt: Select[Any],
    *,
    key: Sequence[InstrumentedAttribute[Any]],
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    ascending: bool = False,
) -> Page[Any]:
    """Run ``stmt`` (filters applied, no ORDER BY/LIMIT) one page at a time by ``key``.

    Items are ORM objects when ``stmt`` selects one entity, else rows; either way each
    item must expose the columns of ``key`` by their attribute names.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    columns = tuple_(*key)
    if cursor is not None:
        last = tuple_(*decode_cursor(cursor, [column.type.python_type for column in key]))
        stmt = stmt.where(columns > last if ascending else columns < last)
    stmt = stmt.order_by(*(column.asc() if ascending else column.desc() for column in key))
    result = session.execute(stmt.limit(limit + 1))
    descriptions = stmt.column_descriptions
    one_entity = len(descriptions) == 1 and isinstance(descriptions[0]["expr"], type)
    rows: Sequence[Any] = result.scalars().all() if one_entity else result.all()
    items = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(*(getattr(items[-1], column.key) for column in key))
    return Page(items=items, next_cursor=next_cursor)


def newest_first(
    session: Session,
    model: Any,
    *,
    equal: dict[InstrumentedAttribute[Any], Any],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Any]:
    """Rows of ``model`` newest first by ``(created_at, id)``: each column of ``equal``
    matching its value (``None`` means no filter) and ``created_at`` in ``[since, until)``."""
    stmt: Select[Any] = select(model)
    for column, value in equal.items():
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(model.created_at >= since)
    if until is not None:
        stmt = stmt.where(model.created_at < until)
    return paginate(session, stmt, key=(model.created_at, model.id), limit=limit, cursor=cursor)
