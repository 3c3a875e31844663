"""The signed-in user's own profile: read and change it (a new email or phone needs proving)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy.orm import Session

from db.models import User
from services.auth import addresses, fields, otp
from services.auth.accounts import flush_unique
from services.auth.context import AuthContext
from services.errors import InvalidInput

USERNAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{2,31}$")
EDITABLE = ("username", "full_name", "avatar_url", "bio", "phone", "email")


def _username(value: str) -> str:
    value = value.strip().lower()
    if not USERNAME.match(value):
        raise InvalidInput(
            "username must be 3-32 characters: a-z, 0-9, '_', '.', '-', not starting with '.' "
            "or '-'", code="invalid_username")
    return value


def update(
    session: Session, ctx: AuthContext, user: User, changes: dict[str, Any], *,
    current_password: str | None = None, session_id: uuid.UUID | None = None,
) -> None:
    """Apply ``changes`` (only the given fields; None clears one).

    A new email or phone is not applied here: a link goes to the new address, a code to the
    new number, and the answer is the same whether or not another account has it.
    """
    if set(changes) - set(EDITABLE):
        raise InvalidInput(f"only {', '.join(EDITABLE)} can be changed", code="invalid_field")
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "email" or (field == "phone" and value is not None):
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
        else:
            limit = fields.NAME_LIMIT if field == "full_name" else fields.TEXT_LIMIT
            values[field] = fields.text(value, field=field, limit=limit)
    for field, value in values.items():
        if getattr(user, field) != value:
            setattr(user, field, value)
        if field == "phone":
            user.phone_confirmed_at = None
            otp.drop_pending_change(session, user_id=user.id)
    flush_unique(session, "username")
    if changes.get("phone") is not None:
        otp.request_change(session, ctx, user, phone=changes["phone"])
    if changes.get("email") is not None:
        addresses.request_change(session, ctx, user, email=changes["email"],
                                 current_password=current_password, session_id=session_id)
