"""Holds on credits, API keys and their spend counters (migration 0005)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, CheckConstraint, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, in_check, uuid_pk

HOLD_STATUSES = ("active", "captured", "released", "expired")
KEY_SCOPES = ("credits:read", "credits:spend", "events:write")


class CreditHold(Base):
    """Credits reserved for a call whose cost is known only when it ends."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint(
            "captured IS NULL OR (captured > 0 AND captured <= credits)",
            name="capture_within_hold",
        ),
        CheckConstraint(in_check("status", HOLD_STATUSES), name="status_known"),
        Index("ix_credit_holds_user_id_created_at", "user_id", "created_at"),
        Index(
            "ix_credit_holds_active_expires_at",
            "expires_at",
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    credits: Mapped[int]
    captured: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    description: Mapped[str | None] = mapped_column(String(500))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    transaction_id: Mapped[int | None]
    expires_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    closed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()


class ApiKey(Base):
    """A ``bk_`` secret for servers, stored as its SHA-256; ``user_id`` None: a server key."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "scopes <@ ARRAY[" + ", ".join(f"'{s}'" for s in KEY_SCOPES) + "]::varchar[] "
            "AND cardinality(scopes) > 0",
            name="scopes_known",
        ),
        CheckConstraint("daily_limit IS NULL OR daily_limit > 0", name="daily_limit_positive"),
        CheckConstraint("monthly_limit IS NULL OR monthly_limit > 0",
                        name="monthly_limit_positive"),
        CheckConstraint("octet_length(secret_hash) = 32", name="sha256"),
        Index("uq_api_keys_secret_hash", "secret_hash", unique=True),
        Index("ix_api_keys_created_by_created_at", "created_by", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    created_by: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT")
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    daily_limit: Mapped[int | None]
    monthly_limit: Mapped[int | None]
    created_at: Mapped[datetime] = created_at()
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class ApiKeySpend(Base):
    """What a key spent in one UTC day (``d2026-12-06``) or month (``m2026-12``), capped."""

    __tablename__ = "api_key_spend"
    __table_args__ = (CheckConstraint("spent <= cap", name="within_cap"),)

    key_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(12), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    spent: Mapped[int]
    cap: Mapped[int]
