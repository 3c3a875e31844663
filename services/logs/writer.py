"""The log writer: validated usage and sign-in records into their tables, in batches.

One statement per batch and kind, from arrays (``unnest``). The usage statement also adds
the batch to the rollups the statistics read (daily, hourly, users active per week) in the
same statement, so a rollup never counts a record twice or misses one. A usage record naming
a user who no longer exists comes back as an orphan instead of failing its batch; a sign-in
attempt naming one is kept without the user. The drain (``consumer.py``) calls these.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session

from services.logs.logstream import LoginRecord, StreamRecord, UsageRecord

# --- writers --------------------------------------------------------------------------------

_INSERT_USAGE = text(
    """
    WITH inserted AS (
        INSERT INTO api_usage_log (id, user_id, endpoint, method, credits, status_code,
                                   response_time_ms, request_id, transaction_id, created_at)
        SELECT * FROM unnest(
            CAST(:id AS uuid[]), CAST(:user_id AS uuid[]), CAST(:endpoint AS text[]),
            CAST(:method AS text[]), CAST(:credits AS bigint[]), CAST(:status_code AS smallint[]),
            CAST(:response_time_ms AS float8[]), CAST(:request_id AS text[]),
            CAST(:transaction_id AS bigint[]), CAST(:created_at AS timestamptz[])
        )
        -- The key of a partitioned log (db/partitions.py); a re-delivered record carries the
        -- same stamp, so it is the same row.
        ON CONFLICT (id, created_at) DO NOTHING
        RETURNING user_id, endpoint, credits, status_code, created_at
    ), rolled AS (
        -- Only rows really inserted count, so a re-delivered record is never counted twice.
        INSERT INTO usage_daily AS d (day, user_id, endpoint, calls, credits, errors)
        SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, endpoint, count(*), sum(credits),
               count(*) FILTER (WHERE status_code >= 400)
        FROM inserted
        GROUP BY 1, 2, 3
        ON CONFLICT (day, user_id, endpoint) DO UPDATE
        SET calls = d.calls + excluded.calls, credits = d.credits + excluded.credits,
            errors = d.errors + excluded.errors
        RETURNING 1
    ), hourly AS (
        -- The hourly rollup (peak hours, total calls), from the same inserted rows.
        INSERT INTO usage_hourly AS h (hour, calls, credits, errors)
        SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*),
               sum(credits), count(*) FILTER (WHERE status_code >= 400)
        FROM inserted
        GROUP BY 1
        ON CONFLICT (hour) DO UPDATE
        SET calls = h.calls + excluded.calls, credits = h.credits + excluded.credits,
            errors = h.errors + excluded.errors
        RETURNING 1
    ), weeks AS (
        -- Retention: a user's first credits used in a week count once in their cohort.
        INSERT INTO usage_user_weeks (user_id, week)
        SELECT DISTINCT user_id, (date_trunc('week', created_at AT TIME ZONE 'UTC'))::date
        FROM inserted WHERE credits > 0
        ON CONFLICT (user_id, week) DO NOTHING
        RETURNING user_id, week
    ), cohorts AS (
        INSERT INTO usage_retention AS r (cohort_week, week, active)
        SELECT (date_trunc('week', u.created_at AT TIME ZONE 'UTC'))::date, w.week, count(*)
        FROM weeks w JOIN users u ON u.id = w.user_id
        GROUP BY 1, 2
        ON CONFLICT (cohort_week, week) DO UPDATE SET active = r.active + excluded.active
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM inserted)
    """
)

_INSERT_LOGIN = text(
    """
    INSERT INTO login_history (id, user_id, identifier, method, success, reason, ip,
                               user_agent, created_at)
    SELECT * FROM unnest(
        CAST(:id AS uuid[]), CAST(:user_id AS uuid[]), CAST(:identifier AS text[]),
        CAST(:method AS text[]), CAST(:success AS boolean[]), CAST(:reason AS text[]),
        CAST(:ip AS inet[]), CAST(:user_agent AS text[]), CAST(:created_at AS timestamptz[])
    )
    ON CONFLICT (id, created_at) DO NOTHING
    """
)

_KNOWN_USERS = text("SELECT id FROM users WHERE id = ANY(CAST(:ids AS uuid[]))")


def _columns(records: list[BaseModel], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [getattr(r, name) for r in records] for name in names}


def _known_users(session: Session, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    if not ids:
        return set()
    return set(session.scalars(_KNOWN_USERS, {"ids": list(ids)}))


def write_usage(session: Session, records: list[UsageRecord]) -> tuple[int, list[UsageRecord]]:
    """Insert usage records and their daily and hourly rollups: (inserted, orphans refused)."""
    known = _known_users(session, {r.user_id for r in records})
    rows = [r for r in records if r.user_id in known]
    orphans = [r for r in records if r.user_id not in known]
    if not rows:
        return 0, orphans
    names = ("id", "user_id", "endpoint", "method", "credits", "status_code",
             "response_time_ms", "request_id", "transaction_id", "created_at")
    inserted = session.execute(_INSERT_USAGE, _columns(list(rows), names)).scalar_one()
    return int(inserted), orphans


def write_logins(session: Session, records: list[LoginRecord]) -> tuple[int, list[LoginRecord]]:
    """Insert sign-in attempts; an attempt naming an unknown user is kept without the user."""
    known = _known_users(session, {r.user_id for r in records if r.user_id is not None})
    rows = [
        r if r.user_id is None or r.user_id in known else r.model_copy(update={"user_id": None})
        for r in records
    ]
    if not rows:
        return 0, []
    names = ("id", "user_id", "identifier", "method", "success", "reason", "ip",
             "user_agent", "created_at")
    result = session.execute(_INSERT_LOGIN, _columns(list(rows), names))
    return int(result.rowcount or 0), []  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Kind:
    model: type[StreamRecord]
    write: Callable[[Session, list[Any]], tuple[int, list[Any]]]


KINDS: dict[str, Kind] = {
    "usage": Kind(UsageRecord, write_usage),
    "login": Kind(LoginRecord, write_logins),
}
