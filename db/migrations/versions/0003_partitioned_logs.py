"""monthly partitions for api_usage_log and login_history

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 03:30:00

Each log becomes a table partitioned by range of ``created_at`` (its key becomes
``(id, created_at)``, as a partitioned table's unique keys must hold the partition key), with
one partition per UTC month from the month of its oldest row to next month, and a DEFAULT
partition (see ``db/partitions.py``). Existing rows are moved in one transaction per table:
the old table is renamed aside, the new one created, the rows copied, the old one dropped;
the secondary indexes and the foreign key are built after the copy (far faster than row by
row). The logs are unavailable for that time; the writer's records wait in Redis meanwhile.

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Callable, Sequence
from typing import Any
from datetime import date

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"


def _created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _usage_columns() -> list[Any]:
    return [
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response_time_ms", sa.Double(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        _created_at(),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_api_usage_log_credits_non_negative")),
    ]


def _login_columns() -> list[Any]:
    return [
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("identifier", sa.String(length=320), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        _created_at(),
        sa.CheckConstraint(
            "method IN ('password', 'magic_link', 'otp', 'google', 'external', 'refresh')",
            name=op.f("ck_login_history_method_known"),
        ),
    ]


# table: (its columns and checks, its secondary indexes)
TABLES: dict[str, tuple[Callable[[], list[Any]], list[tuple[str, list[str]]]]] = {
    "api_usage_log": (
        _usage_columns,
        [
            ("ix_api_usage_log_created_at", ["created_at"]),
            ("ix_api_usage_log_endpoint_created_at", ["endpoint", "created_at"]),
            ("ix_api_usage_log_user_id_created_at", ["user_id", "created_at"]),
        ],
    ),
    "login_history": (
        _login_columns,
        [
            ("ix_login_history_created_at", ["created_at"]),
            ("ix_login_history_user_id_created_at", ["user_id", "created_at"]),
        ],
    ),
}


def upgrade() -> None:
    for table, (columns, indexes) in TABLES.items():
        old = _set_aside(table, indexes, suffix="unpartitioned")
        op.create_table(
            table,
            *columns(),
            sa.PrimaryKeyConstraint("id", "created_at", name=op.f(f"pk_{table}")),
            postgresql_partition_by="RANGE (created_at)",
        )
        for month in _months_to_cover(old):
            lower, upper = _bound(month), _bound(_next(month))
            _partition(f"{table}_p{month:%Y_%m}", table, f"FOR VALUES FROM ({lower}) TO ({upper})")
        # The safety net: a row of a month without a partition lands here, never refused.
        _partition(f"{table}_default", table, "DEFAULT")
        _move_rows(old, table, columns)
        _finish(table, indexes)


def downgrade() -> None:
    for table, (columns, indexes) in TABLES.items():
        old = _set_aside(table, indexes, suffix="partitioned")
        op.create_table(
            table, *columns(), sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))
        )
        _move_rows(old, table, columns)
        _finish(table, indexes)


def _set_aside(table: str, indexes: list[tuple[str, list[str]]], *, suffix: str) -> str:
    """Rename ``table`` out of the way (with its key, so the new one can take the names)."""
    old = f"{table}_{suffix}"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    for name, _ in indexes:
        op.drop_index(name, table_name=old)
    return old


def _partition(name: str, table: str, bounds: str) -> None:
    op.execute(f"CREATE TABLE {name} PARTITION OF {table} {bounds}")
    # Read through the parent only (its policies); should a partition ever be granted to
    # the application role by mistake, it would still show no rows.
    op.execute(f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")


def _move_rows(old: str, table: str, columns: Callable[[], list[Any]]) -> None:
    names = ", ".join(c.name for c in columns() if isinstance(c, sa.Column))
    op.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {old}")  # noqa: S608
    op.drop_table(old)  # its policy and grants go with it


def _finish(table: str, indexes: list[tuple[str, list[str]]]) -> None:
    """Indexes, the foreign key and Row Level Security, as migration 0001 made them."""
    for name, cols in indexes:
        op.create_index(name, table, cols, unique=False)
    op.create_foreign_key(
        op.f(f"fk_{table}_user_id_users"), table, "users", ["user_id"], ["id"], ondelete="CASCADE"
    )
    rule = f"user_id = {_USER_ID} OR {_SCOPE} IN ('admin')"
    op.execute(f"GRANT SELECT ON {table} TO {APP_ROLE}")
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
        f"USING ({rule}) WITH CHECK ({rule})"
    )


def _months_to_cover(old: str) -> list[date]:
    """From the month of the oldest row (or this month) to next month, UTC."""
    oldest, current = op.get_bind().execute(sa.text(
        "SELECT (date_trunc('month', min(created_at) AT TIME ZONE 'UTC'))::date, "  # noqa: S608
        f"(date_trunc('month', now() AT TIME ZONE 'UTC'))::date FROM {old}"
    )).one()
    month = min(oldest or current, current)
    months = []
    while month <= _next(current):
        months.append(month)
        month = _next(month)
    return months


def _next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _bound(month: date) -> str:
    return f"'{month.isoformat()} 00:00:00+00'"
