"""The signed-in user's own profile: read and change it (a new email needs confirming)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.models import OneTimeToken, User
from services.auth import fields, onetime
from services.auth.accounts import by_email, flush_unique, mail_token, normalize_email
from services.auth.context import AuthContext
from services.auth.otp import normalize_phone
from services.errors import Conflict, InvalidInput

USERNAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{2,31}$")
EDITABLE = ("username", "full_name", "avatar_url", "bio", "phone", "email")


def pending_email(session: Session, user: User) -> str | None:
    """The new address of an email change waiting for confirmation, if any."""
    return session.scalar(
        select(OneTimeToken.email)
        .where(OneTimeToken.user_id == user.id, OneTimeToken.purpose == "email_change",
               OneTimeToken.used_at.is_(None), OneTimeToken.expires_at > utc_now())
        .order_by(OneTimeToken.created_at.desc())
        .limit(1)
    )


def _username(value: str) -> str:
    value = value.strip().lower()
    if not USERNAME.match(value):
        raise InvalidInput(
            "username must be 3-32 characters: a-z, 0-9, '_', '.', '-', not starting with '.' "
            "or '-'", code="invalid_username")
    return value


def update(session: Session, ctx: AuthContext, user: User, changes: dict[str, Any]) -> bool:
    """Apply ``changes`` (only the given fields; None clears); True if an email change is pending.

    A new email is not applied here: a confirmation link goes to the new address.
    """
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", code="invalid_field")
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "email":
            continue
        if value is None:
            if field == "phone" and user.phone and not user.email:
                raise InvalidInput("phone is this account's only sign-in; it cannot be removed",
                                   code="invalid_phone")
            values[field] = None
        elif field == "username":
            values[field] = _username(value)
        elif field == "avatar_url":
            values[field] = fields.avatar_url(value)
        elif field == "phone":
            values[field] = normalize_phone(value)
        else:
            limit = fields.NAME_LIMIT if field == "full_name" else fields.TEXT_LIMIT
            values[field] = fields.text(value, field=field, limit=limit)
    for field, value in values.items():
        if getattr(user, field) == value:
            continue
        setattr(user, field, value)
        if field == "phone":
            # A number typed into a form is not proven until a code sent to it comes back.
            user.phone_confirmed_at = None
    flush_unique(session, "username")
    new_email = changes.get("email")
    if new_email is None:
        return False
    new_email = normalize_email(new_email)
    if new_email == user.email:
        return False
    # Whether another account has the address is a question about other users' rows: asked
    # in the service scope (Row Level Security), for this one lookup only.
    with rls.scope(session, "service"):
        taken = by_email(session, new_email) is not None
    if taken:
        raise Conflict("this email is already in use", code="email_taken")
    # Only the newest request stands: a link to an address the user has since corrected
    # must not move the account there.
    onetime.void(session, user_id=user.id, purpose="email_change")
    mail_token(session, ctx, user=user, purpose="email_change", email=new_email)
    return True
