"""Request and response bodies of /api/auth and /api/user-management/profile."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Field limits refuse oversized input before any hashing or lookup.
Email = Field(min_length=3, max_length=320, examples=["ada@example.com"])
Password = Field(min_length=1, max_length=256)
Token = Field(min_length=1, max_length=128)
Phone = Field(min_length=3, max_length=32, examples=["+14155550123"])


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(In):
    email: str = Email
    password: str = Password
    full_name: str | None = Field(None, max_length=200)


class RegisterOut(BaseModel):
    id: uuid.UUID
    email: str
    email_confirmation_required: bool


class ConfirmIn(In):
    token: str = Token


class ConfirmOut(BaseModel):
    email: str
    confirmed: Literal[True] = True


class LoginIn(In):
    email: str = Field(min_length=1, max_length=320)
    password: str = Password


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme, not a secret)
    expires_in: int


class MethodsOut(BaseModel):
    password: bool = Field(description="POST /register and /login")
    magic_link: bool = Field(description="POST /magic-link and /magic-link/verify")
    phone: bool = Field(description="POST /otp and /otp/verify")
    google: bool = Field(description="GET /oauth/google/authorize")
    password_min_length: int
    email_confirmation_required: bool


class RefreshIn(In):
    refresh_token: str = Token


class LogoutIn(In):
    refresh_token: str | None = Field(None, min_length=1, max_length=128)


class MagicLinkIn(In):
    email: str = Email


class MagicLinkVerifyIn(In):
    token: str = Token


class OtpIn(In):
    phone: str = Phone


class OtpVerifyIn(In):
    phone: str = Phone
    code: str = Field(pattern=r"^[0-9]{6}$", examples=["123456"])


class SentOut(BaseModel):
    status: Literal["sent"] = "sent"
    message: str
    expires_in: int


class ProfileIn(In):
    """Only the fields present are changed; null clears one. A new email must be confirmed
    (and needs ``current_password``, or a recent sign-in without one); a new phone gets a
    code to send to ``/profile/phone/verify``."""

    username: str | None = Field(None, max_length=32)
    full_name: str | None = Field(None, max_length=200)
    avatar_url: str | None = Field(None, max_length=2048)
    bio: str | None = Field(None, max_length=2000)
    phone: str | None = Field(None, max_length=32)
    email: str | None = Field(None, max_length=320)
    current_password: str | None = Field(None, min_length=1, max_length=256)


class PhoneVerifyIn(In):
    code: str = Field(pattern=r"^[0-9]{6}$", examples=["123456"])


class ProfileOut(BaseModel):
    id: uuid.UUID
    email: str | None
    email_confirmed: bool
    pending_email: str | None
    phone: str | None
    phone_confirmed: bool
    pending_phone: str | None
    username: str | None
    full_name: str | None
    avatar_url: str | None
    bio: str | None
    role: str
    has_password: bool = Field(description="An email change asks for it (else a recent sign-in)")
    created_at: datetime
