"""Accounts and everything that signs them in."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import INET, UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, in_check, updated_at, uuid_pk

ROLES = ("user", "admin")
SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "paused",
)
LOGIN_METHODS = ("password", "magic_link", "otp", "google", "external", "refresh")
TOKEN_PURPOSES = ("email_confirmation", "magic_link", "email_change", "email_change_undo")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(in_check("role", ROLES), name="role_known"),
        CheckConstraint("credits_purchased >= 0", name="credits_purchased_non_negative"),
        CheckConstraint("credits_used >= 0", name="credits_used_non_negative"),
        CheckConstraint("held_credits >= 0", name="held_credits_non_negative"),
        CheckConstraint("email = lower(email)", name="email_lower_case"),
        CheckConstraint("phone ~ '^\\+[1-9][0-9]{6,14}$'", name="phone_e164"),
        CheckConstraint("username ~ '^[a-z0-9_][a-z0-9_.-]{2,31}$'", name="username_format"),
        CheckConstraint(
            "subscription_status IS NULL OR "
            + in_check("subscription_status", SUBSCRIPTION_STATUSES),
            name="subscription_status_known",
        ),
        Index("uq_users_email", "email", unique=True, postgresql_where=text("email IS NOT NULL")),
        Index("uq_users_phone", "phone", unique=True, postgresql_where=text("phone IS NOT NULL")),
        Index(
            "uq_users_username",
            "username",
            unique=True,
            postgresql_where=text("username IS NOT NULL"),
        ),
        Index("ix_users_created_at_id", "created_at", "id"),
        Index("ix_users_full_name_lower", text("lower(full_name)")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(16))
    username: Mapped[str | None] = mapped_column(String(32))
    full_name: Mapped[str | None] = mapped_column(String(200))
    avatar_url: Mapped[str | None] = mapped_column(String(2048))
    bio: Mapped[str | None] = mapped_column(String(2000))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), server_default="user")
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    email_confirmed_at: Mapped[datetime | None]
    phone_confirmed_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    # Written only by services.credits.ledger: the balance always equals the ledger sum.
    credit_balance: Mapped[int] = mapped_column(server_default="0")
    credits_purchased: Mapped[int] = mapped_column(server_default="0")
    credits_used: Mapped[int] = mapped_column(server_default="0")
    # The sum of the active holds (services.credits.holds): a spend may take only balance - held.
    held_credits: Mapped[int] = mapped_column(server_default="0")
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    subscription_status: Mapped[str | None] = mapped_column(String(32))
    subscription_plan_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("plans.id", ondelete="SET NULL")
    )
    # Thresholds a trigger watches on every balance change (migration 0006): the low-balance
    # alert's, and the auto top-up's while it is enabled. NULL: not watched.
    low_balance_alert: Mapped[int | None]
    auto_topup_below: Mapped[int | None]
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class AuthIdentity(Base):
    """A sign-in identity at an outside provider (Google, Supabase, any JWKS issuer)."""

    __tablename__ = "auth_identities"
    __table_args__ = (
        Index("uq_auth_identities_provider_subject", "provider", "subject", unique=True),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = created_at()


class RefreshToken(Base):
    """An opaque refresh token, stored as its SHA-256; rotation chains share a family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    family_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()


class TokenRevocation(Base):
    """A signed-out access token (``jti:<jti>``) or sign-in (``sid:<session id>``), kept until
    the tokens it names expire: the durable copy of Redis's denylist, which the spend checks
    in its own statement (``billing_token_live``, migration 0011)."""

    __tablename__ = "token_revocations"

    token_key: Mapped[str] = mapped_column(Text, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class OneTimeToken(Base):
    """A hashed single-use token sent by mail (confirmation, magic link, email change, undo)."""

    __tablename__ = "one_time_tokens"
    __table_args__ = (CheckConstraint(in_check("purpose", TOKEN_PURPOSES), name="purpose_known"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # An email change's: the sign-in that asked for it, which its confirmation keeps.
    session_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()


class OtpCode(Base):
    """A hashed six-digit phone code with its attempt counter.

    Without ``user_id`` it signs in; with one, it proves a number that account asked to add.
    """

    __tablename__ = "otp_codes"
    __table_args__ = (
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_otp_codes_phone_created_at", "phone", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    phone: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = created_at()


class LoginHistory(Base):
    """One sign-in attempt, successful or not (written by a worker). Partitioned by month
    (``db.partitions``), so its key is (id, created_at)."""

    __tablename__ = "login_history"
    __table_args__ = (
        CheckConstraint(in_check("method", LOGIN_METHODS), name="method_known"),
        Index("ix_login_history_user_id_created_at", "user_id", "created_at"),
        Index("ix_login_history_created_at", "created_at"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    # Generated by the producer so that a re-delivered record is written once.
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    identifier: Mapped[str | None] = mapped_column(String(320))
    method: Mapped[str] = mapped_column(String(16))
    success: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(200))
    ip: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at(primary_key=True)
