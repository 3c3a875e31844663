"""Retention: old usage and sign-in logs deleted in small batches, each its own transaction.

Each batch deletes at most ``batch_size`` rows picked through the ``created_at`` index
and commits, so no statement holds locks for long and the log writer keeps inserting.
The daily usage rollup is kept: statistics of past days outlive the raw rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import text

from db import rls
from db.base import utc_now
from db.transaction import transaction

log = logging.getLogger(__name__)

TABLES = ("api_usage_log", "login_history")
# Table names come from TABLES only, never from input.
_DELETE = {
    table: text(
        f"DELETE FROM {table} WHERE id IN ("  # noqa: S608
        f"SELECT id FROM {table} WHERE created_at < :cut ORDER BY created_at LIMIT :n)"
    )
    for table in TABLES
}


def purge(
    database_url: str, *, retention_days: int, batch_size: int = 5000,
    max_batches: int = 1000, now: datetime | None = None,
) -> dict[str, int]:
    """Delete log rows older than ``retention_days``; returns rows deleted per table."""
    cut = (now or utc_now()) - timedelta(days=retention_days)
    deleted: dict[str, int] = {}
    for table in TABLES:
        deleted[table] = 0
        for _ in range(max_batches):
            with transaction(database_url, acting_as=rls.OWNER) as session:
                session.execute(text("SET LOCAL lock_timeout = '2s'"))
                result = session.execute(_DELETE[table], {"cut": cut, "n": batch_size})
                count = int(result.rowcount or 0)  # type: ignore[attr-defined]
            deleted[table] += count
            if count < batch_size:
                break
    if any(deleted.values()):
        log.info("old logs deleted", extra={"deleted": deleted, "before": cut.isoformat()})
    return deleted
