"""Access tokens: short-lived JWTs signed by us and verified strictly, and their sign-out."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import redis
import redis.asyncio
from cachetools import LRUCache
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.base import delete_expired, utc_now
from db.models import TokenRevocation
from services.errors import Unauthorized
from settings import Settings

ALGORITHM = "HS256"


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: str
    jti: str
    expires_at: datetime | None = None
    session_id: str | None = None  # the sign-in (refresh token family) that issued it


def create_access_token(
    settings: Settings, *, user_id: uuid.UUID, role: str, session_id: uuid.UUID | None = None
) -> str:
    """A signed access token for ``user_id`` that expires after ``ACCESS_TOKEN_TTL_S``.

    ``session_id`` (claim ``sid``) names the sign-in it belongs to, so that signing out, or
    a stolen refresh token's reuse, stops every access token that sign-in issued.
    """
    now = utc_now()
    claims: dict[str, object] = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=settings.access_token_ttl_s),
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "typ": "access",
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return jwt.encode(claims, settings.jwt_signing_key(), algorithm=ALGORITHM)


# Verified tokens, by their exact text and the key, issuer and audience they were checked
# against: a client's next request with the same token costs a lookup and an expiry check,
# not a signature and six claim checks again. Revocation and the account's state are not
# cached (they are checked on every request).
_VERIFIED: LRUCache[tuple[str, str, str, str], AccessClaims] = LRUCache(maxsize=10_000)
_VERIFIED_LOCK = threading.Lock()


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    """Verify signature, algorithm, issuer, audience and lifetime; raise ``Unauthorized``."""
    key = (token, settings.jwt_signing_key(), settings.jwt_issuer, settings.jwt_audience)
    with _VERIFIED_LOCK:
        claims = _VERIFIED.get(key)
    if claims is None:
        claims = _verify(settings, token)
        with _VERIFIED_LOCK:
            _VERIFIED[key] = claims
    elif claims.expires_at is None or claims.expires_at <= utc_now():
        raise Unauthorized("access token has expired", code="token_expired")
    return claims


def _verify(settings: Settings, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_signing_key(),
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options={"require": ["sub", "exp", "iat", "jti", "iss", "aud", "role"]},
        )
        if claims.get("typ") != "access":
            raise jwt.InvalidTokenError("not an access token")
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            role=claims["role"],
            jti=claims["jti"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            session_id=str(claims["sid"]) if "sid" in claims else None,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("access token has expired", code="token_expired") from None
    except (jwt.InvalidTokenError, ValueError, KeyError, TypeError, OverflowError, OSError):
        raise Unauthorized("access token is invalid", code="invalid_token") from None


_REVOKED_PREFIX = "billing:revoked-jti:"
_REVOKED_SESSION_PREFIX = "billing:revoked-sid:"

# Each sign-out is written twice: to Redis, which the check of most requests reads, and to
# ``token_revocations`` (migration 0011), which survives a restart of Redis (it keeps nothing
# on disk) and which the spend's statement checks itself (``revocation_keys_for_statement``).
# PostgreSQL first: a write it refuses stops the sign-out before Redis hears of it.


def revoke_access_token(session: Session, client: redis.Redis, claims: AccessClaims) -> None:
    """Make one access token stop working before it expires (sign-out)."""
    if claims.expires_at is None:
        return
    now = utc_now()
    remaining = int((claims.expires_at - now).total_seconds()) + 1
    if remaining > 0:
        # Kept only as long as the token would live: the denylist never grows past that.
        _record(session, [f"jti:{claims.jti}"], now + timedelta(seconds=remaining))
        client.set(_REVOKED_PREFIX + claims.jti, b"1", ex=remaining)


def revoke_session(
    session: Session, client: redis.Redis, settings: Settings, session_id: uuid.UUID
) -> None:
    """Make every access token of one sign-in stop working (sign-out, refresh token reuse).

    Kept as long as the newest of them can live: no token of that sign-in outlives it.
    """
    revoke_sessions(session, client, settings, [session_id])


def revoke_sessions(
    session: Session, client: redis.Redis, settings: Settings, session_ids: Iterable[uuid.UUID]
) -> None:
    """``revoke_session`` for many sign-ins at once: one INSERT and one Redis round trip."""
    # Sorted: two sign-outs of overlapping sign-ins lock their rows in one order (no deadlock).
    names = sorted({str(session_id) for session_id in session_ids})
    if not names:
        return
    lifetime = settings.access_token_ttl_s + 1
    _record(session, [f"sid:{name}" for name in names],
            utc_now() + timedelta(seconds=lifetime))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(_REVOKED_SESSION_PREFIX + name, b"1", ex=lifetime)
        pipe.execute()


def _record(session: Session, token_keys: list[str], expires_at: datetime) -> None:
    # A key revoked again keeps the later expiry: a new sign-out never shortens an older one.
    insert = pg_insert(TokenRevocation).values(
        [{"token_key": key, "expires_at": expires_at} for key in token_keys]
    )
    session.execute(insert.on_conflict_do_update(
        index_elements=[TokenRevocation.token_key],
        set_={"expires_at": func.greatest(TokenRevocation.expires_at,
                                          insert.excluded.expires_at)},
    ))


def purge_expired_revocations(session: Session) -> int:
    """Delete the revocations whose tokens have all expired; returns how many."""
    return delete_expired(session, TokenRevocation.expires_at)


def revocation_keys_for_statement(claims: AccessClaims) -> tuple[str, str | None]:
    """The (jti, sid) that a statement checks with ``billing_token_live`` (``db.aio``'s
    ``token``): the access token's own, and its sign-in's."""
    return claims.jti, claims.session_id


def _revocation_keys(claims: AccessClaims) -> list[str]:
    keys = [_REVOKED_PREFIX + claims.jti]
    if claims.session_id is not None:
        keys.append(_REVOKED_SESSION_PREFIX + claims.session_id)
    return keys


async def is_revoked(client: redis.asyncio.Redis, claims: AccessClaims) -> bool:
    """True if this access token, or the sign-in that issued it, was signed out (one round trip,
    on the event loop: every request's token is checked before its route runs)."""
    return bool(await client.exists(*_revocation_keys(claims)))
