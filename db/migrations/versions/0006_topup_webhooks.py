"""saved payment methods, auto top-up, low-balance alerts, outgoing webhooks

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 06:50:00

- ``payment_methods``: our copy of a user's saved Stripe payment methods (kept in step by
  the ``setup_intent.succeeded`` and ``payment_method.attached|detached`` events);
- ``auto_topup_settings`` and ``topup_attempts``: one row per top-up, numbered per user
  (the number is in the Stripe idempotency key), at most one in flight per user (a partial
  unique index);
- two columns on ``users`` (``low_balance_alert``, ``auto_topup_below``) and a trigger that
  writes a ``balance_crossings`` row in the transaction of any balance change that crosses
  one of them (or reaches zero): the one point after every spend, capture, batch or grant,
  whatever path changed the balance;
- ``webhook_endpoints``, ``webhook_events``, ``webhook_deliveries``: the outgoing webhooks'
  transactional outbox (an event and its deliveries are written in the transaction of the
  change that caused them).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"
# table: (privileges of APP_ROLE, the column naming the row's user or None, scopes that see all)
RLS_TABLES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "payment_methods": ("SELECT", "user_id", ("admin",)),
    "auto_topup_settings": ("SELECT, INSERT, UPDATE", "user_id", ("admin",)),
    "topup_attempts": ("SELECT", "user_id", ("admin",)),
    "balance_crossings": ("SELECT", "user_id", ("admin",)),
    "webhook_endpoints": ("SELECT, INSERT, UPDATE", None, ("admin",)),
    "webhook_events": ("SELECT, INSERT", None, ("admin",)),
    "webhook_deliveries": ("SELECT, INSERT, UPDATE", None, ("admin",)),
}

_uuid = postgresql.UUID(as_uuid=True)


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable,
        server_default=None if nullable else sa.text("now()"),
    )


def upgrade() -> None:
    op.add_column("users", sa.Column("low_balance_alert", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("auto_topup_below", sa.BigInteger(), nullable=True))

    op.create_table(
        "payment_methods",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("user_id", _uuid, sa.ForeignKey("users.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("brand", sa.String(32)),
        sa.Column("last4", sa.String(4)),
        sa.Column("exp_month", sa.Integer()),
        sa.Column("exp_year", sa.Integer()),
        sa.Column("detached_at", sa.DateTime(timezone=True)),
        sa.Column("stripe_event_created", sa.BigInteger()),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index("ix_payment_methods_user_id", "payment_methods", ["user_id"])

    op.create_table(
        "auto_topup_settings",
        sa.Column("user_id", _uuid, sa.ForeignKey("users.id", ondelete="RESTRICT"),
                  primary_key=True),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("package_id", sa.String(64),
                  sa.ForeignKey("credit_packages.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("max_per_month", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sequence", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("disabled_reason", sa.String(200)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("threshold > 0", name="ck_auto_topup_settings_threshold_positive"),
        sa.CheckConstraint("max_per_month > 0", name="ck_auto_topup_settings_max_positive"),
    )

    op.create_table(
        "topup_attempts",
        sa.Column("id", _uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("user_id", _uuid, sa.ForeignKey("users.id", ondelete="RESTRICT"),
                  nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("package_id", sa.String(64),
                  sa.ForeignKey("credit_packages.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("payment_id", _uuid, sa.ForeignKey("payments.id", ondelete="RESTRICT")),
        sa.Column("payment_method_id", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_code", sa.String(64)),
        sa.Column("failure_message", sa.String(500)),
        sa.Column("balance_at_start", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'skipped')",
            name="ck_topup_attempts_status_known",
        ),
        sa.UniqueConstraint("user_id", "sequence", name="uq_topup_attempts_user_id_sequence"),
    )
    op.create_index("ix_topup_attempts_user_id_created_at", "topup_attempts",
                    ["user_id", "created_at"])
    # At most one top-up in flight per user.
    op.create_index("uq_topup_attempts_in_flight", "topup_attempts", ["user_id"], unique=True,
                    postgresql_where=sa.text("status = 'pending'"))

    op.create_table(
        "balance_crossings",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("user_id", _uuid, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("balance_before", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        sa.Column("handled_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_balance_crossings_unhandled", "balance_crossings", ["id"],
                    postgresql_where=sa.text("handled_at IS NULL"))

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("disabled_reason", sa.String(200)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("user_id", _uuid),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        _ts("created_at"),
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("endpoint_id", _uuid,
                  sa.ForeignKey("webhook_endpoints.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("event_id", sa.String(64),
                  sa.ForeignKey("webhook_events.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("leased_until", sa.DateTime(timezone=True)),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.String(500)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')",
                           name="ck_webhook_deliveries_status_known"),
    )
    op.create_index("ix_webhook_deliveries_endpoint_id_id", "webhook_deliveries",
                    ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"))

    # The crossing check: one trigger after every change of a balance, whichever code made
    # it. The WHEN clause keeps it free for the spends that cross nothing; SECURITY DEFINER
    # lets the API's role (which may not write the table) record a crossing.
    crossed = ("OLD.credit_balance >= NEW.{col} AND NEW.credit_balance < NEW.{col}")
    op.execute(
        f"""
        CREATE FUNCTION billing_balance_crossing() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = {_schema()}, pg_temp AS $$
        BEGIN
            IF OLD.credit_balance > 0 AND NEW.credit_balance <= 0 THEN
                INSERT INTO balance_crossings (user_id, kind, balance_before, balance_after)
                VALUES (NEW.id, 'depleted', OLD.credit_balance, NEW.credit_balance);
            END IF;
            IF NEW.low_balance_alert IS NOT NULL
               AND {crossed.format(col="low_balance_alert")} THEN
                INSERT INTO balance_crossings (user_id, kind, balance_before, balance_after)
                VALUES (NEW.id, 'low', OLD.credit_balance, NEW.credit_balance);
            END IF;
            IF NEW.auto_topup_below IS NOT NULL
               AND {crossed.format(col="auto_topup_below")} THEN
                INSERT INTO balance_crossings (user_id, kind, balance_before, balance_after)
                VALUES (NEW.id, 'topup', OLD.credit_balance, NEW.credit_balance);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER users_balance_crossing AFTER UPDATE OF credit_balance ON users
        FOR EACH ROW WHEN (
            NEW.credit_balance < OLD.credit_balance AND (
                (OLD.credit_balance > 0 AND NEW.credit_balance <= 0)
                OR (NEW.low_balance_alert IS NOT NULL
                    AND {crossed.format(col="low_balance_alert")})
                OR (NEW.auto_topup_below IS NOT NULL
                    AND {crossed.format(col="auto_topup_below")})))
        EXECUTE FUNCTION billing_balance_crossing()
        """
    )

    for table, (privileges, owner_column, scopes) in RLS_TABLES.items():
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        allowed = f"{_SCOPE} IN ({', '.join(repr(s) for s in scopes)})"
        rule = f"{owner_column} = {_USER_ID} OR {allowed}" if owner_column else allowed
        op.execute(
            f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
            f"USING ({rule}) WITH CHECK ({rule})"
        )
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {_schema()} TO {APP_ROLE}")
    for table in ("auto_topup_settings", "topup_attempts", "payment_methods",
                  "webhook_endpoints", "webhook_deliveries"):
        op.execute(
            f"CREATE TRIGGER {table}_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS users_balance_crossing ON users")
    op.execute("DROP FUNCTION IF EXISTS billing_balance_crossing()")
    for table in ("webhook_deliveries", "webhook_events", "webhook_endpoints",
                  "balance_crossings", "topup_attempts", "auto_topup_settings",
                  "payment_methods"):
        op.drop_table(table)
    op.drop_column("users", "auto_topup_below")
    op.drop_column("users", "low_balance_alert")


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one())
