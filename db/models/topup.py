"""Saved payment methods, auto top-up settings and attempts, balance crossings."""

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
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, in_check, updated_at, uuid_pk

TOPUP_STATUSES = ("pending", "succeeded", "failed", "skipped")
CROSSING_KINDS = ("low", "depleted", "topup")


class SavedPaymentMethod(Base):
    """Our copy of a Stripe payment method saved for off-session use (id: Stripe's)."""

    __tablename__ = "payment_methods"
    __table_args__ = (Index("ix_payment_methods_user_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    type: Mapped[str] = mapped_column(String(32))
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    detached_at: Mapped[datetime | None]
    # Creation time (unix s) of the newest Stripe event applied: older states never win.
    stripe_event_created: Mapped[int | None]
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class AutoTopupSettings(Base):
    """A user's auto top-up: buy ``package_id`` when the balance falls below ``threshold``."""

    __tablename__ = "auto_topup_settings"
    __table_args__ = (
        CheckConstraint("threshold > 0", name="threshold_positive"),
        CheckConstraint("max_per_month > 0", name="max_positive"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    threshold: Mapped[int]
    package_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("credit_packages.id", ondelete="RESTRICT")
    )
    max_per_month: Mapped[int] = mapped_column(Integer)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    # The number of the user's latest top-up: part of its Stripe idempotency key.
    sequence: Mapped[int] = mapped_column(Integer, server_default="0")
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class TopupAttempt(Base):
    """One automatic top-up (or one that the limits skipped), numbered per user."""

    __tablename__ = "topup_attempts"
    __table_args__ = (
        CheckConstraint(in_check("status", TOPUP_STATUSES), name="status_known"),
        UniqueConstraint("user_id", "sequence"),
        Index("ix_topup_attempts_user_id_created_at", "user_id", "created_at"),
        Index("uq_topup_attempts_in_flight", "user_id", unique=True,
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    sequence: Mapped[int] = mapped_column(Integer)
    package_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("credit_packages.id", ondelete="RESTRICT")
    )
    payment_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("payments.id", ondelete="RESTRICT")
    )
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    balance_at_start: Mapped[int]
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class BalanceCrossing(Base):
    """A balance change that crossed a threshold, written by a trigger in its transaction."""

    __tablename__ = "balance_crossings"
    __table_args__ = (
        Index("ix_balance_crossings_unhandled", "id", postgresql_where=text("handled_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(String(16))
    balance_before: Mapped[int]
    balance_after: Mapped[int]
    created_at: Mapped[datetime] = created_at()
    handled_at: Mapped[datetime | None]
