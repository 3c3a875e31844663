"""Queries over API usage: raw records paged, and aggregates by endpoint or day.

Aggregates read the daily rollup (``usage_daily``), so their ranges are whole UTC days
and they stay fast however many raw rows there are (and outlive log retention).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ApiUsageLog, UsageDaily
from services.errors import InvalidInput
from services.pagination import Page, newest_first

GroupBy = Literal["endpoint", "day"]
MAX_GROUPS = 1000


def records(
    session: Session, *, user_id: uuid.UUID | None = None, endpoint: str | None = None,
    since: datetime | None = None, until: datetime | None = None, limit: int = 50,
    cursor: str | None = None,
) -> Page[ApiUsageLog]:
    """Raw usage records, newest first, filtered by user, endpoint and time."""
    return newest_first(
        session, ApiUsageLog,
        equal={ApiUsageLog.user_id: user_id, ApiUsageLog.endpoint: endpoint},
        since=since, until=until, limit=limit, cursor=cursor,
    )


def aggregate(
    session: Session, *, group_by: GroupBy, user_id: uuid.UUID | None = None,
    endpoint: str | None = None, since: date | None = None, until: date | None = None,
) -> list[dict[str, Any]]:
    """Calls, credits, errors and distinct users per endpoint or per UTC day (``until`` excl.)."""
    if since is not None and until is not None and until <= since:
        raise InvalidInput("until must be after since", code="invalid_range")
    key = UsageDaily.endpoint if group_by == "endpoint" else UsageDaily.day
    stmt = select(
        key.label("key"),
        func.sum(UsageDaily.calls).label("calls"),
        func.sum(UsageDaily.credits).label("credits"),
        func.sum(UsageDaily.errors).label("errors"),
        func.count(func.distinct(UsageDaily.user_id)).label("users"),
    ).group_by(key)
    if user_id is not None:
        stmt = stmt.where(UsageDaily.user_id == user_id)
    if endpoint is not None:
        stmt = stmt.where(UsageDaily.endpoint == endpoint)
    if since is not None:
        stmt = stmt.where(UsageDaily.day >= since)
    if until is not None:
        stmt = stmt.where(UsageDaily.day < until)
    order = (func.sum(UsageDaily.credits).desc(), key) if group_by == "endpoint" else (key,)
    rows = session.execute(stmt.order_by(*order).limit(MAX_GROUPS))
    return [
        {group_by: r.key.isoformat() if group_by == "day" else r.key, "calls": int(r.calls),
         "credits": int(r.credits), "errors": int(r.errors), "users": int(r.users)}
        for r in rows
    ]
