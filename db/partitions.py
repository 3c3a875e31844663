"""Monthly partitions of the two logs that grow forever: ``api_usage_log`` and ``login_history``.

Both are partitioned by range of ``created_at`` (migration 0003): one partition per UTC
month, ``<table>_pYYYY_MM``, and a DEFAULT partition, ``<table>_default``, as the safety net:
a row whose month has no partition (beat stopped for months, a clock far off, a record that
waited in Redis past the oldest month kept) is stored there instead of refused. When its
month's partition is created, such rows move into it in the same transaction.

The partitions are made ahead and dropped by scheduled work (``services.logs.retention``) on the
owner's connection, with a short lock timeout:
- a new partition is attached (``ATTACH PARTITION``), which takes no lock that stops the log
  writer or a reader of the parent, only the default partition's, for the moment it takes to
  move that month's rows out of it (normally none);
- a partition is dropped whole, which needs the parent's exclusive lock for an instant; a
  long read can hold that up, and then the drop gives up and the next run tries again.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

from sqlalchemy import text
from sqlalchemy.orm import Session

TABLES = ("api_usage_log", "login_history")
LOCK_TIMEOUT = "2s"
_NAME = re.compile(rf"^({'|'.join(TABLES)})_(?:p(\d{{4}})_(\d{{2}})|default)$")
_CHILDREN = text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = CAST(:table AS regclass)"
)


def month_of(moment: datetime) -> date:
    """The first day of the UTC month ``moment`` falls in."""
    return moment.astimezone(UTC).date().replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first day of the month ``count`` months after ``month`` (before, if negative)."""
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def start_of(month: date) -> datetime:
    """The first instant (UTC) of ``month``."""
    return datetime.combine(month, time(), tzinfo=UTC)


def partition_name(table: str, month: date) -> str:
    """The name of ``table``'s partition for ``month``."""
    return f"{table}_p{month:%Y_%m}"


def default_partition(table: str) -> str:
    """The name of ``table``'s default partition (rows of months without a partition)."""
    return f"{table}_default"


def is_partition(name: str) -> bool:
    """True for the name of one of the logs' partitions (monthly or default)."""
    return _NAME.match(name) is not None


def months(session: Session, table: str) -> list[date]:
    """The months that have a partition of ``table``, oldest first."""
    found = []
    for name in session.scalars(_CHILDREN, {"table": _known(table)}):
        match = _NAME.match(name)
        if match and match.group(2):
            found.append(date(int(match.group(2)), int(match.group(3)), 1))
    return sorted(found)


def create(session: Session, table: str, month: date) -> int | None:
    """Attach ``month``'s partition to ``table`` unless it exists; the rows it took over from
    the default partition, or None if it existed already. Run in a transaction of its own."""
    table = _known(table)
    name, default = partition_name(table, month), default_partition(table)
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    # Self-exclusive, yet compatible with the writer and readers: two runs of this (two beats,
    # a retry) take turns, and the second sees the first's partition.
    session.execute(text(f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE"))
    if month in months(session, table):
        return None
    # Names and bounds come from TABLES and a date, never from input.
    lower, upper = _literal(start_of(month)), _literal(start_of(add_months(month, 1)))
    session.execute(text(
        f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    ))
    # Read through the parent and its policies only (as migration 0003 makes partitions).
    session.execute(text(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"))
    # No row of the month may reach the default partition between the move and the attach
    # (the attach would fail): hold it now, as the attach would anyway.
    session.execute(text(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE"))
    moved = session.execute(text(
        f"WITH moved AS (DELETE FROM {default} "  # noqa: S608
        f"WHERE created_at >= {lower} AND created_at < {upper} RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved"
    )).rowcount  # type: ignore[attr-defined]
    session.execute(text(
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper})"
    ))
    return int(moved or 0)


def drop(session: Session, table: str, month: date) -> None:
    """Drop ``table``'s partition of ``month`` with its rows. Run in a transaction of its own."""
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    session.execute(text(f"DROP TABLE IF EXISTS {partition_name(_known(table), month)}"))


def _known(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"{table!r} is not a partitioned log table")
    return table


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat()}'::timestamptz"
