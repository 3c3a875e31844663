"""Creating, listing, revoking and checking API keys.

A key is ``bk_`` and 43 url-safe characters (256 random bits). Only its SHA-256 is stored
(a fast hash is right for a secret that cannot be guessed; a slow one would only cost every
request), with its first characters for display. The secret is shown once, when made.

Checking a key is one statement, looked up by hash in the ``service`` scope: revocation is
seen by the very next request. The statement also stamps ``last_used_at``, but only when
the stamp is a minute old, so a busy key costs no write per request.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from db import rls
from db.aio import AsyncDatabase
from db.base import utc_now
from db.models.metering import KEY_SCOPES, ApiKey
from services.errors import Forbidden, InvalidInput, NotFound, Unauthorized

PREFIX = "bk_"
DISPLAY_CHARS = 12  # "bk_" and 9 characters of the secret: enough to tell keys apart
READ, SPEND, EVENTS = KEY_SCOPES
MAX_KEYS = 100  # live keys per owner

_LOOKUP = text(
    """
    WITH k AS (
        SELECT k.id, k.user_id, k.created_by, k.scopes, k.daily_limit, k.monthly_limit,
               k.revoked_at, k.last_used_at, o.is_active AS owner_active,
               c.role AS creator_role, c.is_active AS creator_active
        FROM api_keys k
        JOIN users c ON c.id = k.created_by
        LEFT JOIN users o ON o.id = k.user_id
        WHERE k.secret_hash = :secret_hash
    ), touched AS (
        UPDATE api_keys SET last_used_at = now()
        WHERE id = (SELECT id FROM k WHERE revoked_at IS NULL
                    AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds'))
        RETURNING id
    )
    SELECT k.*, (SELECT count(*) FROM touched) AS touched FROM k
    """
)


@dataclass(frozen=True)
class KeyInfo:
    """A checked key: whose it is, what it may do, its limits (``user_id`` None: a server key)."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    created_by: uuid.UUID
    scopes: tuple[str, ...]
    daily_limit: int | None
    monthly_limit: int | None

    @property
    def limited(self) -> bool:
        return self.daily_limit is not None or self.monthly_limit is not None


@dataclass(frozen=True)
class Created:
    key: ApiKey
    secret: str


def is_key(token: str) -> bool:
    """True when a bearer token is one of our API keys (by its form, not checked)."""
    return token.startswith(PREFIX)


def digest(secret: str) -> bytes:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def create(
    session: Session,
    *,
    created_by: uuid.UUID,
    user_id: uuid.UUID | None,
    name: str,
    scopes: Sequence[str],
    daily_limit: int | None = None,
    monthly_limit: int | None = None,
) -> Created:
    """A new key for ``user_id`` (None: a server key of the admin ``created_by``)."""
    unknown = sorted(set(scopes) - set(KEY_SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes are "
            f"{', '.join(KEY_SCOPES)}" if unknown else "a key needs at least one scope",
            code="invalid_scopes",
        )
    live = session.scalar(
        select(text("count(*)")).select_from(ApiKey).where(
            ApiKey.created_by == created_by, ApiKey.revoked_at.is_(None)
        )
    )
    if live is not None and live >= MAX_KEYS:
        raise InvalidInput(f"at most {MAX_KEYS} live keys; revoke one first",
                           code="too_many_keys")
    secret = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        user_id=user_id,
        created_by=created_by,
        name=name,
        prefix=secret[:DISPLAY_CHARS],
        secret_hash=digest(secret),
        scopes=sorted(set(scopes), key=KEY_SCOPES.index),
        daily_limit=daily_limit,
        monthly_limit=monthly_limit,
    )
    session.add(key)
    session.flush()
    session.refresh(key)
    return Created(key=key, secret=secret)


def list_keys(session: Session, *, owner_id: uuid.UUID) -> list[ApiKey]:
    """The keys ``owner_id`` made (theirs and, for an admin, server keys), newest first."""
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.created_by == owner_id)
            .order_by(ApiKey.created_at.desc(), ApiKey.id)
        )
    )


def revoke(session: Session, *, owner_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    """Revoke a key ``owner_id`` made; it stops working at the next request. Idempotent."""
    key = session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.created_by == owner_id)
    )
    if key is None:
        raise NotFound(f"API key {key_id} does not exist", code="api_key_not_found")
    if key.revoked_at is None:
        session.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
        session.refresh(key)
    return key


def authenticate(session: Session, *, secret: str, scope: str) -> KeyInfo:
    """The key of ``secret`` if it is live and has ``scope``; 401 or 403 otherwise."""
    with rls.scope(session, "service"):
        row = session.execute(_LOOKUP, {"secret_hash": digest(secret)}).one_or_none()
    return _checked(row, scope)


async def authenticate_async(db: AsyncDatabase, *, secret: str, scope: str) -> KeyInfo:
    """``authenticate`` on the event loop (one round trip)."""
    row = await db.fetchone(_LOOKUP, {"secret_hash": digest(secret)}, scope="service")
    return _checked(row, scope)


def _checked(row: Any, scope: str) -> KeyInfo:
    if row is None:
        raise Unauthorized("API key is invalid", code="invalid_api_key")
    if row.revoked_at is not None:
        raise Unauthorized("API key was revoked", code="api_key_revoked")
    if row.user_id is None:
        # A server key works while the admin who made it is one.
        if not row.creator_active or row.creator_role != "admin":
            raise Unauthorized("API key is invalid", code="invalid_api_key")
    elif not row.owner_active:
        raise Unauthorized("API key is invalid", code="invalid_api_key")
    if scope not in row.scopes:
        raise Forbidden(f"this API key lacks the scope {scope!r}", code="api_key_scope_missing")
    return KeyInfo(
        id=row.id, user_id=row.user_id, created_by=row.created_by, scopes=tuple(row.scopes),
        daily_limit=row.daily_limit, monthly_limit=row.monthly_limit,
    )
