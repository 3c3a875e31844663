"""Money: packages, plans, the ledger, payments and subscriptions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import CURRENCY_CHECK, Base, created_at, in_check, updated_at, uuid_pk
from db.models.users import SUBSCRIPTION_STATUSES

LEDGER_KINDS = (
    "purchase",
    "usage",
    "refund",
    "bonus",
    "admin_adjustment",
    "subscription_grant",
    "dispute",
    "dispute_reversal",
    "promo",
    "expiry",
    "hold_capture",
)
PAYMENT_STATUSES = (
    "pending",
    "succeeded",
    "failed",
    "canceled",
    "expired",
    "refunded",
    "partially_refunded",
)
PAYMENT_FLOWS = ("checkout", "payment_intent", "subscription")
DISPUTE_STATUSES = ("open", "won", "lost")


class CreditPackage(Base):
    """A credit bundle for sale; its id is the slug clients send as ``package_id``."""

    __tablename__ = "credit_packages"
    __table_args__ = (
        CheckConstraint("id ~ '^[a-z0-9][a-z0-9_-]{1,63}$'", name="id_slug"),
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("price_cents >= 0", name="price_non_negative"),
        CheckConstraint(f"currency {CURRENCY_CHECK}", name="currency_iso"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    credits: Mapped[int]
    price_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), server_default="USD")
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    sort_order: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Plan(Base):
    """A subscription plan that grants ``monthly_credits`` on each paid invoice."""

    __tablename__ = "plans"
    __table_args__ = (
        CheckConstraint("slug ~ '^[a-z0-9][a-z0-9_-]{1,63}$'", name="slug_format"),
        CheckConstraint("monthly_credits > 0", name="monthly_credits_positive"),
        CheckConstraint("trial_credits >= 0", name="trial_credits_non_negative"),
        CheckConstraint("price_cents >= 0", name="price_non_negative"),
        CheckConstraint(f"currency {CURRENCY_CHECK}", name="currency_iso"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    monthly_credits: Mapped[int]
    # Granted by the $0 invoice that starts a subscription (a trial); none by default.
    trial_credits: Mapped[int] = mapped_column(server_default="0")
    price_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), server_default="USD")
    stripe_price_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_plan_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class CreditTransaction(Base):
    """One append-only ledger entry; a trigger refuses UPDATE and DELETE."""

    __tablename__ = "credit_transactions"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        CheckConstraint(in_check("kind", LEDGER_KINDS), name="kind_known"),
        CheckConstraint(
            "kind <> 'usage' OR (amount < 0 AND balance_after >= 0)", name="usage_never_overdraws"
        ),
        Index("ix_credit_transactions_user_id_id", "user_id", "id"),
        Index("ix_credit_transactions_created_at", "created_at"),
        Index("ix_credit_transactions_reference", "reference_type", "reference_id"),
        # The exactly-once guard: one entry per cause (payment, refund, invoice, key...).
        Index(
            "uq_credit_transactions_dedupe_key",
            "dedupe_key",
            unique=True,
            postgresql_where=text("dedupe_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    amount: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    balance_after: Mapped[int]
    reference_type: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[str | None] = mapped_column(String(255))
    dedupe_key: Mapped[str | None] = mapped_column(String(300))
    description: Mapped[str | None] = mapped_column(String(500))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_at()


class Payment(Base):
    """A purchase attempt through Stripe; settled only by the Stripe event pipeline."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_cents >= 0", name="amount_non_negative"),
        CheckConstraint(f"currency {CURRENCY_CHECK}", name="currency_iso"),
        CheckConstraint("credits >= 0", name="credits_non_negative"),
        CheckConstraint(
            "refunded_cents >= 0 AND refunded_cents <= amount_cents", name="refund_within_amount"
        ),
        CheckConstraint(
            "credits_refunded >= 0 AND credits_refunded <= credits", name="credits_refund_bounded"
        ),
        CheckConstraint(in_check("status", PAYMENT_STATUSES), name="status_known"),
        CheckConstraint(in_check("flow", PAYMENT_FLOWS), name="flow_known"),
        CheckConstraint(
            "dispute_status IS NULL OR " + in_check("dispute_status", DISPUTE_STATUSES),
            name="dispute_status_known",
        ),
        Index("ix_payments_user_id_created_at", "user_id", "created_at"),
        Index("ix_payments_status_created_at", "status", "created_at"),
        Index("ix_payments_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    package_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("credit_packages.id", ondelete="RESTRICT"), index=True
    )
    plan_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("plans.id", ondelete="RESTRICT")
    )
    flow: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24), server_default="pending")
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    credits: Mapped[int]
    refunded_cents: Mapped[int] = mapped_column(server_default="0")
    credits_refunded: Mapped[int] = mapped_column(server_default="0")
    dispute_status: Mapped[str | None] = mapped_column(String(8))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    succeeded_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Subscription(Base):
    """A user's Stripe subscription, kept in step by subscription events."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint(in_check("status", SUBSCRIPTION_STATUSES), name="status_known"),
        Index("ix_subscriptions_user_id", "user_id"),
        Index("ix_subscriptions_status_plan_id", "status", "plan_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    plan_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("plans.id", ondelete="RESTRICT")
    )
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(32))
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    canceled_at: Mapped[datetime | None]
    # Creation time (unix s) of the newest Stripe event applied: older states never win.
    stripe_event_created: Mapped[int | None]
    raw: Mapped[dict | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
