"""The inbox of Stripe events: one row per event id."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, in_check, updated_at

EVENT_STATUSES = ("pending", "processed", "failed", "ignored")


class StripeEvent(Base):
    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint(in_check("status", EVENT_STATUSES), name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_stripe_events_status_received_at", "status", "received_at"),
        Index("ix_stripe_events_type", "type"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    livemode: Mapped[bool] = mapped_column(Boolean)
    stripe_created: Mapped[int]
    payload: Mapped[dict] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = created_at()
    processed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = updated_at()


class StripeRefund(Base):
    """A Stripe refund that was counted in its payment's ``refunded_cents``, or that ended
    (``failed``, ``canceled``) and so must never count again (migration 0010)."""

    __tablename__ = "stripe_refunds"
    __table_args__ = (
        CheckConstraint("amount_cents >= 0", name="amount_non_negative"),
        Index("ix_stripe_refunds_payment_id", "payment_id"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("payments.id", ondelete="CASCADE")
    )
    amount_cents: Mapped[int] = mapped_column(Integer)
    counted: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = created_at()
