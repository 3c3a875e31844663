"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 11:19:59.016659
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_stats_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_stats_snapshots")),
    )
    op.create_index(
        "ix_admin_stats_snapshots_computed_at",
        "admin_stats_snapshots",
        ["computed_at"],
        unique=False,
    )
    op.create_table(
        "credit_packages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), server_default="USD", nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_credit_packages_currency_iso")),
        sa.CheckConstraint(
            "id ~ '^[a-z0-9][a-z0-9_-]{1,63}$'", name=op.f("ck_credit_packages_id_slug")
        ),
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_packages_credits_positive")),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_credit_packages_price_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_packages")),
    )
    op.create_table(
        "daily_reports",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily_reports")),
        sa.UniqueConstraint("day", name=op.f("uq_daily_reports_day")),
    )
    op.create_table(
        "integrity_checks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "checked_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("users_checked", sa.BigInteger(), nullable=False),
        sa.Column("mismatches", sa.BigInteger(), nullable=False),
        sa.Column("details", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_integrity_checks")),
    )
    op.create_table(
        "otp_codes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_otp_codes_attempts_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_otp_codes")),
    )
    op.create_index(
        "ix_otp_codes_phone_created_at", "otp_codes", ["phone", "created_at"], unique=False
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("monthly_credits", sa.BigInteger(), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), server_default="USD", nullable=False),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_plan_id", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_plans_currency_iso")),
        sa.CheckConstraint(
            "slug ~ '^[a-z0-9][a-z0-9_-]{1,63}$'", name=op.f("ck_plans_slug_format")
        ),
        sa.CheckConstraint("monthly_credits > 0", name=op.f("ck_plans_monthly_credits_positive")),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_plans_price_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("slug", name=op.f("uq_plans_slug")),
        sa.UniqueConstraint("stripe_plan_id", name=op.f("uq_plans_stripe_plan_id")),
        sa.UniqueConstraint("stripe_price_id", name=op.f("uq_plans_stripe_price_id")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("stripe_created", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'failed', 'ignored')",
            name=op.f("ck_stripe_events_status_known"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_stripe_events_attempts_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(
        "ix_stripe_events_status_received_at",
        "stripe_events",
        ["status", "received_at"],
        unique=False,
    )
    op.create_index("ix_stripe_events_type", "stripe_events", ["type"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("username", sa.String(length=32), nullable=True),
        sa.Column("full_name", sa.String(length=200), nullable=True),
        sa.Column("avatar_url", sa.String(length=2048), nullable=True),
        sa.Column("bio", sa.String(length=2000), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("role", sa.String(length=16), server_default="user", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("email_confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("phone_confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credit_balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credits_purchased", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credits_used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_status", sa.String(length=32), nullable=True),
        sa.Column("subscription_plan_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("phone ~ '^\\+[1-9][0-9]{6,14}$'", name=op.f("ck_users_phone_e164")),
        sa.CheckConstraint("role IN ('user', 'admin')", name=op.f("ck_users_role_known")),
        sa.CheckConstraint(
            "subscription_status IS NULL OR subscription_status IN ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled', 'unpaid', 'paused')",
            name=op.f("ck_users_subscription_status_known"),
        ),
        sa.CheckConstraint(
            "username ~ '^[a-z0-9_][a-z0-9_.-]{2,31}$'", name=op.f("ck_users_username_format")
        ),
        sa.CheckConstraint(
            "credits_purchased >= 0", name=op.f("ck_users_credits_purchased_non_negative")
        ),
        sa.CheckConstraint("credits_used >= 0", name=op.f("ck_users_credits_used_non_negative")),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lower_case")),
        sa.ForeignKeyConstraint(
            ["subscription_plan_id"],
            ["plans.id"],
            name=op.f("fk_users_subscription_plan_id_plans"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_users_stripe_customer_id")),
    )
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_users_full_name_lower", "users", [sa.literal_column("lower(full_name)")], unique=False
    )
    op.create_index(
        "uq_users_email",
        "users",
        ["email"],
        unique=True,
        postgresql_where=sa.text("email IS NOT NULL"),
    )
    op.create_index(
        "uq_users_phone",
        "users",
        ["phone"],
        unique=True,
        postgresql_where=sa.text("phone IS NOT NULL"),
    )
    op.create_index(
        "uq_users_username",
        "users",
        ["username"],
        unique=True,
        postgresql_where=sa.text("username IS NOT NULL"),
    )
    op.create_table(
        "admin_activity_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("admin_id", sa.UUID(), nullable=True),
        sa.Column("target_user_id", sa.UUID(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["admin_id"],
            ["users.id"],
            name=op.f("fk_admin_activity_log_admin_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["target_user_id"],
            ["users.id"],
            name=op.f("fk_admin_activity_log_target_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_activity_log")),
    )
    op.create_index(
        "ix_admin_activity_log_admin_id", "admin_activity_log", ["admin_id"], unique=False
    )
    op.create_index(
        "ix_admin_activity_log_created_at", "admin_activity_log", ["created_at"], unique=False
    )
    op.create_index(
        "ix_admin_activity_log_target_user_id",
        "admin_activity_log",
        ["target_user_id"],
        unique=False,
    )
    op.create_table(
        "api_usage_log",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=True),
        sa.Column("credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response_time_ms", sa.Double(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_api_usage_log_credits_non_negative")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_usage_log_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_usage_log")),
    )
    op.create_index("ix_api_usage_log_created_at", "api_usage_log", ["created_at"], unique=False)
    op.create_index(
        "ix_api_usage_log_endpoint_created_at",
        "api_usage_log",
        ["endpoint", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_api_usage_log_user_id_created_at",
        "api_usage_log",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_usage_daily_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("day", "user_id", "endpoint", name=op.f("pk_usage_daily")),
    )
    op.create_index("ix_usage_daily_user_id_day", "usage_daily", ["user_id", "day"], unique=False)
    op.create_table(
        "auth_identities",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("provider", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_auth_identities_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_identities")),
    )
    op.create_index(
        op.f("ix_auth_identities_user_id"), "auth_identities", ["user_id"], unique=False
    )
    op.create_index(
        "uq_auth_identities_provider_subject",
        "auth_identities",
        ["provider", "subject"],
        unique=True,
    )
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("reference_type", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.String(length=255), nullable=True),
        sa.Column("dedupe_key", sa.String(length=300), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind <> 'usage' OR (amount < 0 AND balance_after >= 0)",
            name=op.f("ck_credit_transactions_usage_never_overdraws"),
        ),
        sa.CheckConstraint(
            "kind IN ('purchase', 'usage', 'refund', 'bonus', 'admin_adjustment', 'subscription_grant', 'dispute', 'dispute_reversal')",
            name=op.f("ck_credit_transactions_kind_known"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_credit_transactions_amount_non_zero")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_credit_transactions_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
    )
    op.create_index(
        "ix_credit_transactions_created_at", "credit_transactions", ["created_at"], unique=False
    )
    op.create_index(
        "ix_credit_transactions_reference",
        "credit_transactions",
        ["reference_type", "reference_id"],
        unique=False,
    )
    op.create_index(
        "ix_credit_transactions_user_id_id", "credit_transactions", ["user_id", "id"], unique=False
    )
    op.create_index(
        "uq_credit_transactions_dedupe_key",
        "credit_transactions",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="in_progress", nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('in_progress', 'completed')", name=op.f("ck_idempotency_keys_state_known")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_idempotency_keys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        "ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], unique=False
    )
    op.create_index(
        "uq_idempotency_keys_scope", "idempotency_keys", ["user_id", "scope", "key"], unique=True
    )
    op.create_table(
        "login_history",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("identifier", sa.String(length=320), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "method IN ('password', 'magic_link', 'otp', 'google', 'external', 'refresh')",
            name=op.f("ck_login_history_method_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_login_history_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_history")),
    )
    op.create_index("ix_login_history_created_at", "login_history", ["created_at"], unique=False)
    op.create_index(
        "ix_login_history_user_id_created_at",
        "login_history",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "one_time_tokens",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "purpose IN ('email_confirmation', 'magic_link', 'email_change')",
            name=op.f("ck_one_time_tokens_purpose_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_one_time_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_one_time_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_one_time_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_one_time_tokens_user_id"), "one_time_tokens", ["user_id"], unique=False
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("package_id", sa.String(length=64), nullable=True),
        sa.Column("plan_id", sa.UUID(), nullable=True),
        sa.Column("flow", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=24), server_default="pending", nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("refunded_cents", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("credits_refunded", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("dispute_status", sa.String(length=8), nullable=True),
        sa.Column("stripe_checkout_session_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_payments_currency_iso")),
        sa.CheckConstraint(
            "dispute_status IS NULL OR dispute_status IN ('open', 'won', 'lost')",
            name=op.f("ck_payments_dispute_status_known"),
        ),
        sa.CheckConstraint(
            "flow IN ('checkout', 'payment_intent', 'subscription')",
            name=op.f("ck_payments_flow_known"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'canceled', 'expired', 'refunded', 'partially_refunded')",
            name=op.f("ck_payments_status_known"),
        ),
        sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_payments_amount_non_negative")),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_payments_credits_non_negative")),
        sa.CheckConstraint(
            "credits_refunded >= 0 AND credits_refunded <= credits",
            name=op.f("ck_payments_credits_refund_bounded"),
        ),
        sa.CheckConstraint(
            "refunded_cents >= 0 AND refunded_cents <= amount_cents",
            name=op.f("ck_payments_refund_within_amount"),
        ),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["credit_packages.id"],
            name=op.f("fk_payments_package_id_credit_packages"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_payments_plan_id_plans"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_payments_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("stripe_charge_id", name=op.f("uq_payments_stripe_charge_id")),
        sa.UniqueConstraint(
            "stripe_checkout_session_id", name=op.f("uq_payments_stripe_checkout_session_id")
        ),
        sa.UniqueConstraint("stripe_invoice_id", name=op.f("uq_payments_stripe_invoice_id")),
        sa.UniqueConstraint(
            "stripe_payment_intent_id", name=op.f("uq_payments_stripe_payment_intent_id")
        ),
    )
    op.create_index("ix_payments_created_at", "payments", ["created_at"], unique=False)
    op.create_index(op.f("ix_payments_package_id"), "payments", ["package_id"], unique=False)
    op.create_index(
        "ix_payments_status_created_at", "payments", ["status", "created_at"], unique=False
    )
    op.create_index(
        "ix_payments_user_id_created_at", "payments", ["user_id", "created_at"], unique=False
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("family_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_refresh_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_refresh_tokens_token_hash")),
    )
    op.create_index(
        op.f("ix_refresh_tokens_family_id"), "refresh_tokens", ["family_id"], unique=False
    )
    op.create_index(op.f("ix_refresh_tokens_user_id"), "refresh_tokens", ["user_id"], unique=False)
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("plan_id", sa.UUID(), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("current_period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "cancel_at_period_end", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_event_created", sa.BigInteger(), nullable=True),
        sa.Column("raw", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled', 'unpaid', 'paused')",
            name=op.f("ck_subscriptions_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"],
            ["plans.id"],
            name=op.f("fk_subscriptions_plan_id_plans"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_subscriptions_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint(
            "stripe_subscription_id", name=op.f("uq_subscriptions_stripe_subscription_id")
        ),
    )
    op.create_index(
        "ix_subscriptions_status_plan_id", "subscriptions", ["status", "plan_id"], unique=False
    )
    op.create_index("ix_subscriptions_user_id", "subscriptions", ["user_id"], unique=False)
    _create_triggers()
    _seed_packages()
    _enable_row_level_security()


def downgrade() -> None:
    _revoke_app_role()
    op.drop_index("ix_subscriptions_user_id", table_name="subscriptions")
    op.drop_index("ix_subscriptions_status_plan_id", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_index(op.f("ix_refresh_tokens_user_id"), table_name="refresh_tokens")
    op.drop_index(op.f("ix_refresh_tokens_family_id"), table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_payments_user_id_created_at", table_name="payments")
    op.drop_index("ix_payments_status_created_at", table_name="payments")
    op.drop_index(op.f("ix_payments_package_id"), table_name="payments")
    op.drop_index("ix_payments_created_at", table_name="payments")
    op.drop_table("payments")
    op.drop_index(op.f("ix_one_time_tokens_user_id"), table_name="one_time_tokens")
    op.drop_table("one_time_tokens")
    op.drop_index("ix_login_history_user_id_created_at", table_name="login_history")
    op.drop_index("ix_login_history_created_at", table_name="login_history")
    op.drop_table("login_history")
    op.drop_index("uq_idempotency_keys_scope", table_name="idempotency_keys")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index(
        "uq_credit_transactions_dedupe_key",
        table_name="credit_transactions",
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )
    op.drop_index("ix_credit_transactions_user_id_id", table_name="credit_transactions")
    op.drop_index("ix_credit_transactions_reference", table_name="credit_transactions")
    op.drop_index("ix_credit_transactions_created_at", table_name="credit_transactions")
    op.drop_table("credit_transactions")
    op.drop_index("uq_auth_identities_provider_subject", table_name="auth_identities")
    op.drop_index(op.f("ix_auth_identities_user_id"), table_name="auth_identities")
    op.drop_table("auth_identities")
    op.drop_index("ix_usage_daily_user_id_day", table_name="usage_daily")
    op.drop_table("usage_daily")
    op.drop_index("ix_api_usage_log_user_id_created_at", table_name="api_usage_log")
    op.drop_index("ix_api_usage_log_endpoint_created_at", table_name="api_usage_log")
    op.drop_index("ix_api_usage_log_created_at", table_name="api_usage_log")
    op.drop_table("api_usage_log")
    op.drop_index("ix_admin_activity_log_target_user_id", table_name="admin_activity_log")
    op.drop_index("ix_admin_activity_log_created_at", table_name="admin_activity_log")
    op.drop_index("ix_admin_activity_log_admin_id", table_name="admin_activity_log")
    op.drop_table("admin_activity_log")
    op.drop_index(
        "uq_users_username", table_name="users", postgresql_where=sa.text("username IS NOT NULL")
    )
    op.drop_index(
        "uq_users_phone", table_name="users", postgresql_where=sa.text("phone IS NOT NULL")
    )
    op.drop_index(
        "uq_users_email", table_name="users", postgresql_where=sa.text("email IS NOT NULL")
    )
    op.drop_index("ix_users_full_name_lower", table_name="users")
    op.drop_index("ix_users_created_at_id", table_name="users")
    op.drop_table("users")
    op.drop_index("ix_stripe_events_type", table_name="stripe_events")
    op.drop_index("ix_stripe_events_status_received_at", table_name="stripe_events")
    op.drop_table("stripe_events")
    op.drop_table("plans")
    op.drop_index("ix_otp_codes_phone_created_at", table_name="otp_codes")
    op.drop_table("otp_codes")
    op.drop_table("integrity_checks")
    op.drop_table("daily_reports")
    op.drop_table("credit_packages")
    op.drop_index("ix_admin_stats_snapshots_computed_at", table_name="admin_stats_snapshots")
    op.drop_table("admin_stats_snapshots")
    op.execute("DROP FUNCTION IF EXISTS set_updated_at() CASCADE")
    op.execute("DROP FUNCTION IF EXISTS refuse_ledger_change() CASCADE")


UPDATED_AT_TABLES = (
    "users",
    "credit_packages",
    "plans",
    "payments",
    "subscriptions",
    "stripe_events",
)


def _create_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END $$
        """
    )
    for table in UPDATED_AT_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_set_updated_at BEFORE UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION set_updated_at()"
        )
    # The ledger is append-only: history is corrected by new entries, never by edits.
    op.execute(
        """
        CREATE FUNCTION refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'credit_transactions is append-only (% refused)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER credit_transactions_append_only BEFORE UPDATE OR DELETE "
        "ON credit_transactions FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change()"
    )


def _seed_packages() -> None:
    packages = sa.table(
        "credit_packages",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("credits", sa.BigInteger),
        sa.column("price_cents", sa.BigInteger),
        sa.column("currency", sa.String),
        sa.column("sort_order", sa.Integer),
    )
    op.bulk_insert(
        packages,
        [
            {
                "id": "starter",
                "name": "Starter",
                "credits": 100,
                "price_cents": 1500,
                "currency": "USD",
                "sort_order": 1,
            },
            {
                "id": "pro",
                "name": "Pro",
                "credits": 500,
                "price_cents": 6000,
                "currency": "USD",
                "sort_order": 2,
            },
            {
                "id": "enterprise",
                "name": "Enterprise",
                "credits": 2000,
                "price_cents": 20000,
                "currency": "USD",
                "sort_order": 3,
            },
        ],
    )


# Row Level Security (see db/rls.py). The API runs each request's transaction as APP_ROLE,
# which owns nothing, so these policies apply to it; the owner (migrations, workers, CLI)
# is not subject to them (RLS is not FORCEd).
APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"

# table: (privileges of APP_ROLE, the column naming the row's user or None,
#         scopes that see every row). Least privilege: the ledger is append-only, logs and
#         rollups are written by workers, deletes are done by workers only.
RLS_TABLES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "users": ("SELECT, INSERT, UPDATE", "id", ("admin", "service")),
    "auth_identities": ("SELECT, INSERT, UPDATE", "user_id", ("admin", "service")),
    "refresh_tokens": ("SELECT, INSERT, UPDATE", "user_id", ("admin", "service")),
    "one_time_tokens": ("SELECT, INSERT, UPDATE", "user_id", ("admin", "service")),
    "login_history": ("SELECT", "user_id", ("admin",)),
    "credit_transactions": ("SELECT, INSERT", "user_id", ("admin",)),
    "payments": ("SELECT, INSERT, UPDATE", "user_id", ("admin",)),
    "subscriptions": ("SELECT, INSERT, UPDATE", "user_id", ("admin",)),
    "api_usage_log": ("SELECT", "user_id", ("admin",)),
    "usage_daily": ("SELECT", "user_id", ("admin",)),
    "idempotency_keys": ("SELECT, INSERT, UPDATE", "user_id", ("admin",)),
    "otp_codes": ("SELECT, INSERT, UPDATE", None, ("service",)),
    "stripe_events": ("SELECT, INSERT, UPDATE", None, ("admin", "service")),
    "admin_activity_log": ("SELECT, INSERT", None, ("admin",)),
    "admin_stats_snapshots": ("SELECT", None, ("admin",)),
    "daily_reports": ("SELECT", None, ("admin",)),
    "integrity_checks": ("SELECT", None, ("admin",)),
}
# Readable by every request (what is for sale), written by admins only.
CATALOG_TABLES = ("credit_packages", "plans")


def _enable_row_level_security() -> None:
    # Roles are cluster-wide: another database on the cluster may have made it already, maybe
    # at this very moment (a concurrent CREATE ROLE fails with unique_violation).
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                BEGIN
                    CREATE ROLE {APP_ROLE} NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END;
            END IF;
            IF NOT pg_has_role(current_user, '{APP_ROLE}', 'MEMBER') THEN
                BEGIN
                    -- lets the connecting owner switch to the role (SET LOCAL ROLE)
                    EXECUTE format('GRANT {APP_ROLE} TO %I', current_user);
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END;
            END IF;
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA {_schema()} TO {APP_ROLE}")
    for table, (privileges, owner_column, scopes) in RLS_TABLES.items():
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        allowed = f"{_SCOPE} IN ({', '.join(repr(s) for s in scopes)})"
        rule = f"{owner_column} = {_USER_ID} OR {allowed}" if owner_column else allowed
        op.execute(
            f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
            f"USING ({rule}) WITH CHECK ({rule})"
        )
    for table in CATALOG_TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_read ON {table} FOR SELECT TO {APP_ROLE} USING (true)")
        op.execute(
            f"CREATE POLICY {table}_admin ON {table} FOR ALL TO {APP_ROLE} "
            f"USING ({_SCOPE} = 'admin') WITH CHECK ({_SCOPE} = 'admin')"
        )
    # Identity columns: nextval on the tables the role inserts into.
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {_schema()} TO {APP_ROLE}")


def _revoke_app_role() -> None:
    # The role and its memberships stay: other databases of the cluster may use them.
    # Policies go with their tables.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {APP_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM {APP_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {APP_ROLE}', current_schema());
            END IF;
        END $$
        """
    )


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one())
