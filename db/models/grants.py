"""Credits as grants (lots): where each credit came from, what is left of it, when it lapses;
and the promo codes that make grants."""

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
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, in_check, uuid_pk

GRANT_SOURCES = ("purchase", "subscription", "bonus", "promo", "admin")


class CreditGrant(Base):
    """Credits that entered an account together: ``remaining`` of ``amount`` is still to spend.

    Changed only by the ledger's function (``ledger_post`` / ``expire_grants`` of migration
    0004), under the user's row lock, in the transaction that writes the ledger row."""

    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint(in_check("source", GRANT_SOURCES), name="source_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_within_amount"),
        CheckConstraint("expired >= 0 AND expired + remaining <= amount", name="expired_bounded"),
        CheckConstraint("priority BETWEEN 0 AND 100", name="priority_range"),
        # The burn-down order of a user's grants that still hold credits.
        Index(
            "ix_credit_grants_burn",
            "user_id", "priority", "expires_at", "id",
            postgresql_where=text("remaining > 0"),
        ),
        # The expiry sweep: grants holding credits that lapse.
        Index(
            "ix_credit_grants_expires_at",
            "expires_at",
            postgresql_where=text("remaining > 0 AND expires_at IS NOT NULL"),
        ),
        Index("ix_credit_grants_user_id_id", "user_id", "id"),
        Index("ix_credit_grants_reference", "reference_type", "reference_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    source: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int]
    remaining: Mapped[int]
    # Credits that left through the grant's expiry row (0 until it expires).
    expired: Mapped[int] = mapped_column(server_default="0")
    priority: Mapped[int] = mapped_column(SmallInteger)
    expires_at: Mapped[datetime | None]
    reference_type: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = created_at()


class PromoCode(Base):
    """A code users redeem once each for a grant; found by the hash of its upper-cased text."""

    __tablename__ = "promo_codes"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("max_redemptions IS NULL OR max_redemptions > 0",
                        name="max_redemptions_positive"),
        CheckConstraint("redemptions >= 0 AND (max_redemptions IS NULL "
                        "OR redemptions <= max_redemptions)", name="redemptions_bounded"),
        CheckConstraint("grant_validity_days IS NULL OR grant_validity_days > 0",
                        name="grant_validity_positive"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    code: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    credits: Mapped[int]
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    redemptions: Mapped[int] = mapped_column(Integer, server_default="0")
    valid_until: Mapped[datetime | None]
    grant_validity_days: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = created_at()


class PromoRedemption(Base):
    """One user's redemption of one code (at most one each) and the grant it made."""

    __tablename__ = "promo_redemptions"
    __table_args__ = (UniqueConstraint("promo_code_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    promo_code_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("promo_codes.id", ondelete="RESTRICT")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), index=True
    )
    grant_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("credit_grants.id", ondelete="RESTRICT")
    )
    created_at: Mapped[datetime] = created_at()
