"""Factories: committed rows and signed-in headers, built the way the product builds them."""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy.orm import Session

from db.models import User
from services import ledger
from services.auth.tokens import create_access_token
from settings import get_settings

_seq = itertools.count(1)


def make_user(
    db: Session, *, email: str | None = None, role: str = "user", credits: int = 0,
    active: bool = True, **fields,
) -> User:
    """A committed, confirmed user; ``credits`` are granted through the ledger as a bonus."""
    from db.base import utc_now

    user = User(
        email=email or f"user{next(_seq)}-{uuid.uuid4().hex[:6]}@example.com",
        role=role,
        is_active=active,
        email_confirmed_at=utc_now(),
        **fields,
    )
    db.add(user)
    db.flush()
    if credits:
        ledger.post(db, user_id=user.id, amount=credits, kind="bonus", reference_type="test")
    db.commit()
    return user


def auth_headers(user: User) -> dict[str, str]:
    """A bearer header with a fresh access token for ``user``."""
    token = create_access_token(get_settings(), user_id=user.id, role=user.role)
    return {"Authorization": f"Bearer {token}"}
