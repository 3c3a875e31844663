"""Opaque refresh tokens: stored as SHA-256, rotated on each use, a reused one revokes its family.

Each sign-in starts a family; every ``rotate`` marks the presented token used and
issues its successor in the same family. A token presented again after it was
used means two parties hold it (one of them a thief), so the whole family is
revoked and both must sign in again.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import redis
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.models import RefreshToken, User
from db.transaction import transaction
from services.auth.context import AuthContext
from services.auth.tokens import create_access_token, revoke_session, revoke_sessions
from services.errors import Unauthorized
from settings import Settings

MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 (the scheme's name, not a secret)


def _hash(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def _new_refresh(
    session: Session, settings: Settings, *, user_id: uuid.UUID, family_id: uuid.UUID
) -> str:
    raw = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            user_id=user_id,
            family_id=family_id,
            token_hash=_hash(raw),
            expires_at=utc_now() + timedelta(seconds=settings.refresh_token_ttl_s),
        )
    )
    session.flush()
    return raw


def _pair(session: Session, settings: Settings, user: User, family_id: uuid.UUID) -> TokenPair:
    return TokenPair(
        access_token=create_access_token(settings, user_id=user.id, role=user.role,
                                         session_id=family_id),
        refresh_token=_new_refresh(session, settings, user_id=user.id, family_id=family_id),
        expires_in=settings.access_token_ttl_s,
    )


def sign_in(session: Session, settings: Settings, user: User) -> TokenPair:
    """Start a new session (token family) for ``user`` and return its first token pair."""
    user.last_login_at = utc_now()
    return _pair(session, settings, user, uuid.uuid4())


def _find(session: Session, raw: str) -> RefreshToken | None:
    if not raw or len(raw) > MAX_TOKEN_LENGTH:
        return None
    return session.scalar(select(RefreshToken).where(RefreshToken.token_hash == _hash(raw)))


def _revoke_family_now(session: Session, ctx: AuthContext, family_id: uuid.UUID) -> None:
    # Committed on its own: the request answers 401 and its own transaction rolls back.
    # End ours first: a conditional UPDATE that lost the race to a concurrent rotation
    # still holds the lock of the row it re-checked, and the revoking transaction would
    # wait on it forever (a wait across two of our own connections that PostgreSQL
    # cannot see as a deadlock).
    session.rollback()
    assert ctx.settings.database_url is not None
    with transaction(ctx.settings.database_url, acting_as=rls.context_of(session)) as own:
        own.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
        # The access tokens the thief already holds stop too, not only the refresh tokens.
        revoke_session(own, ctx.redis, ctx.settings, family_id)


def rotate(session: Session, ctx: AuthContext, raw: str) -> TokenPair:
    """Exchange a refresh token for a new pair; reuse of a used token revokes its family."""
    row = _find(session, raw)

    def refuse(message: str, code: str, user_id: uuid.UUID | None = None) -> Unauthorized:
        ctx.record(method="refresh", success=False, reason=code, user_id=user_id)
        return Unauthorized(message, code=code)

    if row is None:
        raise refuse("refresh token is invalid", "invalid_refresh_token")
    user_id, family_id = row.user_id, row.family_id  # still known after a rollback
    if row.revoked_at is not None:
        raise refuse("refresh token has been revoked", "refresh_token_revoked", row.user_id)
    if row.used_at is not None:
        _revoke_family_now(session, ctx, family_id)
        raise refuse(
            "refresh token was already used; every session of this sign-in is revoked",
            "refresh_token_reused",
            user_id,
        )
    now = utc_now()
    if row.expires_at <= now:
        raise refuse("refresh token has expired", "refresh_token_expired", row.user_id)
    # Conditional: of two concurrent rotations, the loser sees reuse and revokes the family.
    # And never from a family that is revoked in part: a sign-out that raced the rotation
    # which made this token revoked its predecessor but could not see this one yet.
    revoked_sibling = (
        select(RefreshToken.id)
        .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_not(None))
        .exists()
    )
    won = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.id == row.id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            ~revoked_sibling,
        )
        .values(used_at=now)
        .returning(RefreshToken.id)
    ).first()
    if won is None:
        _revoke_family_now(session, ctx, family_id)
        raise refuse("refresh token was already used", "refresh_token_reused", user_id)
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        raise refuse("account is disabled", "account_disabled", row.user_id)
    ctx.record(method="refresh", success=True, user_id=user.id)
    return _pair(session, ctx.settings, user, row.family_id)


def revoke(session: Session, ctx: AuthContext, raw: str) -> bool:
    """Sign out: revoke the family of ``raw`` and its access tokens; False if it is unknown."""
    row = _find(session, raw)
    if row is None:
        return False
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utc_now())
    )
    revoke_session(session, ctx.redis, ctx.settings, row.family_id)
    return True


def sign_out_everywhere(
    session: Session, *, redis_client: redis.Redis, settings: Settings, user_id: uuid.UUID,
    keep: uuid.UUID | None = None,
) -> None:
    """End every sign-in of ``user_id`` but ``keep``: refresh tokens and access tokens alike.

    For the moments the account changes hands or is closed (an address proven by its owner,
    an email change confirmed or undone, deactivation). A sign-in's access tokens are
    stopped through its ``sid``: every family that is still live, or issued a token within
    an access token's lifetime, is named in Redis and in PostgreSQL.
    """
    now = utc_now()
    recent = now - timedelta(seconds=settings.access_token_ttl_s + 1)
    mine = RefreshToken.user_id == user_id
    if keep is not None:
        mine = mine & (RefreshToken.family_id != keep)
    families = session.scalars(
        select(RefreshToken.family_id)
        .where(mine, or_(RefreshToken.revoked_at.is_(None), RefreshToken.created_at > recent))
        .distinct()
    ).all()
    session.execute(
        update(RefreshToken).where(mine, RefreshToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    revoke_sessions(session, redis_client, settings, families)
