"""hourly usage rollup and plan changes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 06:50:00

``usage_hourly``: calls, credits and errors per UTC hour, written by the log drain in the same
statement as ``usage_daily`` (the snapshot's peak hours and total calls read it, never the raw
log). Filled here from the raw usage log; days the log no longer holds (retention) but the
daily rollup does are counted at their day's first hour, so all-time totals agree.

``usage_user_weeks`` and ``usage_retention``: each (user, ISO week) with credits used, and
per sign-up week and week of use how many users; the drain writes both in the same statement
(retention cohorts read the second: a dozen rows a week instead of every user's activity).

``plan_changes``: each change of a subscription's plan (``POST /subscription/change``), with
its from and to plan, its direction (upgrade or downgrade) and when it takes effect: an
upgrade at once, a downgrade at the period's end (``scheduled`` until the renewal applies it).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"


def upgrade() -> None:
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("hour", name=op.f("pk_usage_hourly")),
    )
    op.execute(
        """
        INSERT INTO usage_hourly (hour, calls, credits, errors)
        SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
               count(*), sum(credits), count(*) FILTER (WHERE status_code >= 400)
        FROM api_usage_log GROUP BY 1
        """
    )
    op.execute(
        """
        INSERT INTO usage_hourly (hour, calls, credits, errors)
        SELECT d.day::timestamp AT TIME ZONE 'UTC', sum(d.calls), sum(d.credits), sum(d.errors)
        FROM usage_daily d
        WHERE NOT EXISTS (
            SELECT 1 FROM usage_hourly h
            WHERE h.hour >= d.day::timestamp AT TIME ZONE 'UTC'
              AND h.hour < (d.day + 1)::timestamp AT TIME ZONE 'UTC')
        GROUP BY d.day
        """
    )
    # Retention's rollups: each (user, ISO week) with credits used, and per sign-up week and
    # week of use the number of such users. The drain adds a pair the first time it sees it
    # and counts it once in its cohort. Filled here from the daily rollup.
    op.create_table(
        "usage_user_weeks",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_usage_user_weeks_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "week", name=op.f("pk_usage_user_weeks")),
    )
    op.create_table(
        "usage_retention",
        sa.Column("cohort_week", sa.Date(), nullable=False),
        sa.Column("week", sa.Date(), nullable=False),
        sa.Column("active", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("cohort_week", "week", name=op.f("pk_usage_retention")),
    )
    op.execute(
        """
        INSERT INTO usage_user_weeks (user_id, week)
        SELECT DISTINCT user_id, (date_trunc('week', day))::date
        FROM usage_daily WHERE credits > 0
        """
    )
    op.execute(
        """
        INSERT INTO usage_retention (cohort_week, week, active)
        SELECT (date_trunc('week', u.created_at AT TIME ZONE 'UTC'))::date, w.week, count(*)
        FROM usage_user_weeks w JOIN users u ON u.id = w.user_id
        GROUP BY 1, 2
        """
    )
    op.create_table(
        "plan_changes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("subscription_id", sa.UUID(), nullable=False),
        sa.Column("from_plan_id", sa.UUID(), nullable=False),
        sa.Column("to_plan_id", sa.UUID(), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("direction IN ('upgrade', 'downgrade')",
                           name=op.f("ck_plan_changes_direction_known")),
        sa.CheckConstraint("status IN ('applied', 'scheduled', 'superseded')",
                           name=op.f("ck_plan_changes_status_known")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_plan_changes_user_id_users")),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"], ondelete="CASCADE",
                                name=op.f("fk_plan_changes_subscription_id_subscriptions")),
        sa.ForeignKeyConstraint(["from_plan_id"], ["plans.id"],
                                name=op.f("fk_plan_changes_from_plan_id_plans")),
        sa.ForeignKeyConstraint(["to_plan_id"], ["plans.id"],
                                name=op.f("fk_plan_changes_to_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_changes")),
    )
    op.create_index("ix_plan_changes_created_at", "plan_changes", ["created_at"])
    op.create_index("ix_plan_changes_subscription_id", "plan_changes",
                    ["subscription_id", "created_at"])
    # At most one downgrade waits for a subscription's renewal.
    op.create_index("uq_plan_changes_scheduled", "plan_changes", ["subscription_id"],
                    unique=True, postgresql_where=sa.text("status = 'scheduled'"))
    for table, privileges, owner in (("usage_hourly", "SELECT", None),
                                     ("usage_user_weeks", "SELECT", "user_id"),
                                     ("usage_retention", "SELECT", None),
                                     ("plan_changes", "SELECT, INSERT, UPDATE", "user_id")):
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        rule = f"{_SCOPE} = 'admin'"
        if owner:
            rule = f"{owner} = {_USER_ID} OR {rule}"
        op.execute(f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
                   f"USING ({rule}) WITH CHECK ({rule})")


def downgrade() -> None:
    op.drop_table("plan_changes")
    op.drop_table("usage_retention")
    op.drop_table("usage_user_weeks")
    op.drop_table("usage_hourly")
