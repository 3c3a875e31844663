"""Bearer tokens of an outside identity provider: Supabase (HS256) or any JWKS issuer.

Verified with an explicit algorithm list, audience and (when set) issuer. The
account is found by the provider's subject (``AuthIdentity``), then by email,
and created on first sight.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jwt
from sqlalchemy.orm import Session

from db.models import User
from services.auth.accounts import check_can_sign_in, link_identity
from services.auth.context import AuthContext
from services.errors import DomainError, Unauthorized, UpstreamUnavailable
from settings import Settings

METHOD = "external"
# Asymmetric algorithms only for JWKS keys: a JWKS public key must never verify HS256.
JWKS_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


def configured(settings: Settings) -> bool:
    """True when tokens of an outside provider are accepted."""
    return settings.external_jwt_secret is not None or settings.external_jwks_url is not None


def issued_by_us(settings: Settings, token: str) -> bool:
    """True if the token claims our issuer (so our own verification's verdict stands)."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return unverified.get("iss") == settings.jwt_issuer


@lru_cache(maxsize=4)
def jwks_client(url: str) -> jwt.PyJWKClient:
    """A JWKS client per URL, caching the key set (refetched for an unknown ``kid``)."""
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


def verify(settings: Settings, token: str) -> dict[str, Any]:
    """The verified claims of an outside token; ``Unauthorized`` otherwise."""
    invalid = Unauthorized("access token is invalid", code="invalid_token")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
        key: Any
        if alg == "HS256" and settings.external_jwt_secret is not None:
            key, algorithms = settings.external_jwt_secret.get_secret_value(), ["HS256"]
        elif alg in JWKS_ALGORITHMS and settings.external_jwks_url is not None:
            key = jwks_client(str(settings.external_jwks_url)).get_signing_key_from_jwt(token)
            algorithms = [alg]
        else:
            raise invalid
        audience = settings.external_jwt_audience
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=audience,
            issuer=settings.external_jwt_issuer,
            options={"require": ["sub", "exp", "iat"], "verify_aud": audience is not None},
        )
    except jwt.PyJWKClientConnectionError:
        raise UpstreamUnavailable("the identity provider's keys cannot be fetched") from None
    except jwt.ExpiredSignatureError:
        raise Unauthorized("access token has expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise invalid from None


def _email_verified(claims: dict[str, Any]) -> bool:
    """The OIDC ``email_verified`` claim, or Supabase's copy of it in ``user_metadata``."""
    if claims.get("email_verified") is True:
        return True
    meta = claims.get("user_metadata")
    return isinstance(meta, dict) and meta.get("email_verified") is True


def authenticate(session: Session, ctx: AuthContext, token: str) -> User:
    """The account of a verified outside token, linked or created on first sight."""
    claims = verify(ctx.settings, token)
    subject = str(claims["sub"])[:255]
    provider = f"external:{str(claims.get('iss') or 'default')[:200]}"
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    try:
        # An address counts as proven only when the provider says so: a project that signs
        # tokens before confirming the address (Supabase with "Confirm email" off) must not
        # link a stranger to the account that owns it. A new account is still created.
        user, first_sight = link_identity(
            session, ctx, provider=provider, subject=subject, email=email,
            email_verified=_email_verified(claims),
        )
    except DomainError as exc:
        ctx.record(method=METHOD, success=False, reason=exc.code, identifier=email)
        raise
    check_can_sign_in(ctx, user, method=METHOD, identifier=email)
    if first_sight:
        ctx.record(method=METHOD, success=True, user_id=user.id, identifier=email)
    return user
