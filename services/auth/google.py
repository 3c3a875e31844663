"""Sign-in with Google (OpenID Connect authorization code flow with PKCE).

``authorize`` keeps state, nonce and the PKCE verifier in Redis for ten minutes
under the state's hash and returns the provider URL; the browser also gets the
state in a cookie, so a callback can only complete the flow its own browser
started. ``callback`` takes the entry once (GETDEL), exchanges the code over
HTTPS, and verifies the ID token against the provider's JWKS: signature
(RS256 only), issuer, audience, expiry and nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from sqlalchemy.orm import Session

from services.auth.accounts import check_can_sign_in, link_identity
from services.auth.context import AuthContext
from services.auth.external import jwks_client
from services.auth.refresh import TokenPair, sign_in
from services.errors import DomainError, InvalidInput, NotFound, Unauthorized, UpstreamUnavailable
from settings import Settings

METHOD = "google"
PROVIDER = "google"
STATE_TTL_S = 600
_STATE_PREFIX = "billing:oauth:google:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _state_key(state: str) -> str:
    return _STATE_PREFIX + hashlib.sha256(state.encode()).hexdigest()


def redirect_url(settings: Settings) -> str:
    """Where Google sends the browser back to (registered with the OAuth client).

    By default the portal's ``/auth/google`` page, which hands the code and state to
    ``GET /api/auth/oauth/google/callback`` and keeps the tokens it answers; a browser sent
    to the callback itself would only show them as JSON.
    """
    if settings.google_redirect_url is not None:
        return str(settings.google_redirect_url)
    return str(settings.public_base_url).rstrip("/") + "/auth/google"


def _client(settings: Settings) -> tuple[str, str]:
    if not settings.google_client_id or settings.google_client_secret is None:
        raise NotFound("Google sign-in is not configured", code="google_not_configured")
    return settings.google_client_id, settings.google_client_secret.get_secret_value()


def authorize(ctx: AuthContext) -> tuple[str, str]:
    """Start a sign-in: the provider URL to redirect to, and the state for the cookie."""
    client_id, _ = _client(ctx.settings)
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    ctx.redis.set(_state_key(state), json.dumps({"nonce": nonce, "verifier": verifier}),
                  ex=STATE_TTL_S)
    query = urlencode({
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_url(ctx.settings),
        "scope": "openid email profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
        "prompt": "select_account",
    })
    return f"{ctx.settings.google_authorize_url}?{query}", state


def _exchange(settings: Settings, code: str, verifier: str) -> str:
    client_id, client_secret = _client(settings)
    try:
        response = httpx.post(
            str(settings.google_token_url),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_url(settings),
                "client_id": client_id,
                "client_secret": client_secret,
                "code_verifier": verifier,
            },
            headers={"Accept": "application/json"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"Google cannot be reached ({type(exc).__name__})") from None
    if response.status_code >= 500:
        raise UpstreamUnavailable(f"Google's token endpoint answered {response.status_code}")
    if response.status_code != 200:
        raise Unauthorized("Google refused the sign-in code", code="oauth_code_rejected")
    try:
        id_token = response.json()["id_token"]
    except (ValueError, KeyError, TypeError):
        raise UpstreamUnavailable("Google's token response has no ID token") from None
    if not isinstance(id_token, str):
        raise UpstreamUnavailable("Google's token response has no ID token")
    return id_token


def verify_id_token(settings: Settings, id_token: str, *, nonce: str) -> dict[str, Any]:
    """The ID token's claims once signature, issuer, audience, expiry and nonce check out."""
    invalid = Unauthorized("Google's ID token did not verify", code="invalid_id_token")
    try:
        key = jwks_client(str(settings.google_jwks_url)).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            key,
            algorithms=["RS256"],
            audience=settings.google_client_id,
            issuer=settings.google_issuer,
            options={"require": ["iss", "aud", "sub", "exp", "iat", "nonce"]},
        )
    except jwt.PyJWKClientConnectionError:
        raise UpstreamUnavailable("Google's signing keys cannot be fetched") from None
    except jwt.PyJWTError:
        raise invalid from None
    if not hmac.compare_digest(str(claims["nonce"]).encode(), nonce.encode()):
        raise invalid
    return claims


def callback(
    session: Session,
    ctx: AuthContext,
    *,
    code: str | None,
    state: str | None,
    cookie_state: str | None,
    error: str | None = None,
) -> TokenPair:
    """Finish a sign-in: check state, exchange the code, verify, link or create the account."""
    try:
        if error:
            raise Unauthorized("the sign-in was cancelled at Google", code="oauth_denied")
        if not code or not state or len(code) > 2048 or len(state) > 128:
            raise InvalidInput("code and state are required", code="invalid_oauth_callback")
        # As bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 401).
        if not cookie_state or not hmac.compare_digest(cookie_state.encode(), state.encode()):
            raise InvalidInput("this sign-in was not started in this browser",
                               code="oauth_state_mismatch")
        saved = ctx.redis.getdel(_state_key(state))
        if saved is None:
            raise InvalidInput("the sign-in has expired or was already used; start again",
                               code="oauth_state_expired")
        flow = json.loads(saved)
        claims = verify_id_token(ctx.settings, _exchange(ctx.settings, code, flow["verifier"]),
                                 nonce=flow["nonce"])
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        user, _ = link_identity(
            session, ctx, provider=PROVIDER, subject=str(claims["sub"])[:255], email=email,
            email_verified=claims.get("email_verified") is True,
            full_name=claims.get("name") if isinstance(claims.get("name"), str) else None,
            avatar_url=claims.get("picture") if isinstance(claims.get("picture"), str) else None,
        )
    except DomainError as exc:
        ctx.record(method=METHOD, success=False, reason=exc.code)
        raise
    check_can_sign_in(ctx, user, method=METHOD, identifier=email)
    ctx.record(method=METHOD, success=True, user_id=user.id, identifier=email)
    return sign_in(session, ctx.settings, user)
