"""Retention of the usage and sign-in logs: monthly partitions made ahead and dropped whole.

Both logs are partitioned by UTC month (``db.partitions``). ``prepare`` makes this month's
partition and the next ``MONTHS_AHEAD`` (beat runs it daily; the migration made this month's
and the next), so the writer never waits on DDL; rows that reached a default partition
meanwhile move into their month's. ``purge`` drops every partition whose whole month is older
than the retention window, one transaction each, and deletes in small batches the rows older
than the window that sit in the default partitions. A log row is therefore kept at least
``retention_days`` and at most one month longer; nothing scans or deletes the rows of a
monthly partition. The daily usage rollup is kept: statistics of past days outlive the raw
rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import text

from db import partitions, rls
from db.base import utc_now
from db.transaction import transaction

log = logging.getLogger(__name__)

MONTHS_AHEAD = 2
# Table names come from partitions.TABLES only, never from input.
_DELETE_OLD_DEFAULT = {
    table: text(
        f"DELETE FROM {partitions.default_partition(table)} WHERE (id, created_at) IN ("  # noqa: S608
        f"SELECT id, created_at FROM {partitions.default_partition(table)} "
        "WHERE created_at < :cut ORDER BY created_at LIMIT :n)"
    )
    for table in partitions.TABLES
}


@dataclass
class Purged:
    """What one purge removed."""

    dropped: list[str] = field(default_factory=list)  # partitions dropped whole
    deleted: dict[str, int] = field(default_factory=dict)  # rows deleted from default partitions


def prepare(
    database_url: str, *, now: datetime | None = None,
    months_ahead: int = MONTHS_AHEAD,
) -> list[str]:
    """Create the logs' partitions of this month and the next ``months_ahead`` where missing;
    returns the names of those created."""
    first = partitions.month_of(now or utc_now())
    created = []
    for table in partitions.TABLES:
        for ahead in range(months_ahead + 1):
            month = partitions.add_months(first, ahead)
            with transaction(database_url, acting_as=rls.OWNER) as session:
                moved = partitions.create(session, table, month)
            if moved is None:
                continue
            created.append(partitions.partition_name(table, month))
            if moved:
                # Harmless, but a sign that partitions were missing for a while.
                log.warning("log rows moved out of the default partition",
                            extra={"table": table, "month": month.isoformat(), "rows": moved})
    if created:
        log.info("log partitions created", extra={"partitions": created})
    return created


def purge(
    database_url: str, *, retention_days: int, batch_size: int = 5000,
    max_batches: int = 1000, now: datetime | None = None,
) -> Purged:
    """Drop the log partitions older than ``retention_days`` and delete the default
    partitions' rows older than that."""
    cut = (now or utc_now()) - timedelta(days=retention_days)
    result = Purged()
    for table in partitions.TABLES:
        with transaction(database_url, acting_as=rls.OWNER) as session:
            months = partitions.months(session, table)
        for month in months:
            if partitions.start_of(partitions.add_months(month, 1)) > cut:
                break  # this month still holds rows inside the window, and so do later ones
            with transaction(database_url, acting_as=rls.OWNER) as session:
                partitions.drop(session, table, month)
            result.dropped.append(partitions.partition_name(table, month))
        result.deleted[table] = _delete_old_defaults(
            database_url, table, cut=cut, batch_size=batch_size, max_batches=max_batches)
    if result.dropped or any(result.deleted.values()):
        log.info("old logs removed", extra={"partitions_dropped": result.dropped,
                                            "default_rows_deleted": result.deleted,
                                            "before": cut.isoformat()})
    return result


def _delete_old_defaults(database_url: str, table: str, *, cut: datetime,
                         batch_size: int, max_batches: int) -> int:
    """Rows older than ``cut`` in ``table``'s default partition, deleted in batches of their
    own transaction (normally there are none)."""
    deleted = 0
    for _ in range(max_batches):
        with transaction(database_url, acting_as=rls.OWNER) as session:
            session.execute(text(f"SET LOCAL lock_timeout = '{partitions.LOCK_TIMEOUT}'"))
            result = session.execute(_DELETE_OLD_DEFAULT[table], {"cut": cut, "n": batch_size})
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            break
    return deleted
