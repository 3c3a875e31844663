"""Single-use tokens sent by mail (confirmation, magic link, email change and its undo), hashed."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import OneTimeToken
from services.errors import InvalidInput

# Tokens are 43 url-safe characters; anything far longer is not one of ours.
MAX_TOKEN_LENGTH = 128


def token_hash(raw: str) -> bytes:
    """The SHA-256 under which a token is stored (the raw token is never stored)."""
    return hashlib.sha256(raw.encode()).digest()


def create(
    session: Session,
    *,
    purpose: str,
    email: str,
    ttl_s: int,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
) -> str:
    """Store a new token for ``purpose`` and return the raw token (to be mailed, never logged)."""
    raw = secrets.token_urlsafe(32)
    session.add(
        OneTimeToken(
            user_id=user_id,
            session_id=session_id,
            purpose=purpose,
            email=email,
            token_hash=token_hash(raw),
            expires_at=utc_now() + timedelta(seconds=ttl_s),
        )
    )
    session.flush()
    return raw


def void(session: Session, *, user_id: uuid.UUID, purpose: str) -> None:
    """Spend the user's unused tokens for ``purpose``: a newer one replaces them."""
    session.execute(
        update(OneTimeToken)
        .where(OneTimeToken.user_id == user_id, OneTimeToken.purpose == purpose,
               OneTimeToken.used_at.is_(None))
        .values(used_at=utc_now())
        .execution_options(synchronize_session=False)
    )


def consume(session: Session, raw: str, *, purposes: tuple[str, ...]) -> OneTimeToken:
    """Mark the token used and return it; ``InvalidInput`` when unknown, used or expired."""
    if not raw or len(raw) > MAX_TOKEN_LENGTH:
        raise InvalidInput("the link is invalid", code="invalid_token")
    row = session.scalar(
        select(OneTimeToken).where(
            OneTimeToken.token_hash == token_hash(raw), OneTimeToken.purpose.in_(purposes)
        )
    )
    if row is None:
        raise InvalidInput("the link is invalid", code="invalid_token")
    if row.used_at is not None:
        raise InvalidInput("the link has already been used", code="token_used")
    now = utc_now()
    if row.expires_at <= now:
        raise InvalidInput("the link has expired; ask for a new one", code="token_expired")
    # Conditional: of two concurrent uses, exactly one wins.
    won = session.execute(
        update(OneTimeToken)
        .where(OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None))
        .values(used_at=now)
        .returning(OneTimeToken.id)
    ).first()
    if won is None:
        raise InvalidInput("the link has already been used", code="token_used")
    session.refresh(row)
    return row
