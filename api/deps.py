"""Request dependencies: settings, one database transaction per request, the signed-in user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

import redis
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.client import auth_context
from db import rls
from db.models import User
from db.transaction import transaction
from services.apikeys import keys as apikeys
from services.auth import external
from services.auth.tokens import AccessClaims, decode_access_token, is_revoked
from services.errors import Forbidden, Unauthorized
from settings import Settings


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    """The app's Redis client (rate limits, hand-offs, short-lived state)."""
    return request.app.state.redis


def get_session(request: Request) -> Iterator[Session]:
    """One transaction for the request: committed after the route returns, else rolled back.

    It runs as the application role under Row Level Security, acting for nobody (no user
    rows) until ``CurrentUser``/``AdminUser`` (or ``ServiceSessionDep``) says whose request
    it is.
    """
    settings: Settings = request.app.state.settings
    assert settings.database_url is not None
    with transaction(settings.database_url, acting_as=rls.NOBODY) as session:
        yield session


def request_id_of(request: Request) -> str:
    """The id of this request (also in the ``X-Request-ID`` response header)."""
    return request.scope.get("state", {}).get("request_id", "")


async def request_id(request: Request) -> str:
    """The request id, as a dependency."""
    return request_id_of(request)


SettingsDep = Annotated[Settings, Depends(app_settings)]
# scope="function": the transaction commits before the response is sent, so a 200 is never
# answered for work that then fails to commit (the default would commit after sending).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
RequestIdDep = Annotated[str, Depends(request_id)]

_bearer = HTTPBearer(auto_error=False, description="An access token from /api/auth/login")
# The raw bearer credentials, for a route that checks them itself.
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
# What a route that reads the credentials with ``bearer_of`` adds to its schema.
BEARER_SECURITY = [{_bearer.scheme_name: []}]


async def bearer_of(request: Request) -> HTTPAuthorizationCredentials | None:
    """``BearerDep`` read off the request without FastAPI's dependency solving (for the
    spend, called at high rates); such a route declares ``BEARER_SECURITY`` in its schema."""
    return await _bearer(request)


async def token_claims(request: Request, credentials: BearerDep) -> AccessClaims | None:
    """The claims of the request's access token if it is ours, checked on the event loop.

    Raises ``Unauthorized`` for a missing, invalid, expired or signed-out token of ours;
    ``None`` for a token an outside provider may have issued (``current_user`` asks it).
    Whether the account is still active is for the caller to check.
    """
    claims = unrevoked_claims(request, credentials)
    if claims is not None and await is_revoked(request.state.aredis, claims):
        raise Unauthorized("access token was signed out", code="token_revoked")
    return claims


def unrevoked_claims(request: Request,
                     credentials: HTTPAuthorizationCredentials | None) -> AccessClaims | None:
    """``token_claims`` without the revocation check: for a caller whose database statement
    checks it (``ledger.spend``'s ``token``), and that must not act on the claims otherwise."""
    token = bearer_token(credentials)
    if apikeys.is_key(token):
        raise key_not_accepted()
    return _own_claims(request.app.state.settings, token)


ClaimsDep = Annotated[AccessClaims | None, Depends(token_claims)]


def current_user(
    request: Request, session: SessionDep, claims: ClaimsDep, credentials: BearerDep
) -> User:
    """The signed-in, active user of the request's bearer token; 401 otherwise.

    Our own access token first; when an outside provider is configured, its tokens too.
    """
    if claims is None:
        # Finding (or creating) the account of an outside identity looks across accounts.
        rls.set_context(session, scope="service")
        user = external.authenticate(session, auth_context(request), bearer_token(credentials))
        if user is not None:
            rls.set_context(session, scope="user", user_id=user.id)
    else:
        request.state.session_id = claims.session_id  # the sign-in: see ``session_id_of``
        # From here on the transaction sees and changes only this user's rows.
        rls.set_context(session, scope="user", user_id=claims.user_id)
        user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise inactive_account()
    request.state.user_id = user.id  # for the usage middleware (BILLING_LOG_ALL_REQUESTS)
    return user


def session_id_of(request: Request) -> uuid.UUID | None:
    """The sign-in (refresh token family) of the request's own access token, if it names one."""
    sid = getattr(request.state, "session_id", None)
    try:
        return uuid.UUID(sid) if sid else None
    except ValueError:
        return None


async def signed_in_user_id(request: Request, credentials: BearerDep) -> uuid.UUID:
    """The user of the request's bearer token, for the routes that run on the event loop.

    Our own token is checked right here (its verification cached, its revocation one Redis
    round trip); whether the account is still active is left to the route's one statement,
    which acts only for an active account. An outside provider's token is checked in a
    worker thread, as ``current_user`` does it (the account may have to be created).
    """
    claims = await token_claims(request, credentials)
    if claims is not None:
        user_id = claims.user_id
    else:
        user_id = await run_in_threadpool(_outside_user_id, request, credentials)
    request.state.user_id = user_id  # for the usage middleware
    return user_id


def _outside_user_id(request: Request, credentials: HTTPAuthorizationCredentials | None
                     ) -> uuid.UUID:
    settings: Settings = request.app.state.settings
    assert settings.database_url is not None
    with transaction(settings.database_url, acting_as=rls.NOBODY) as session:
        return current_user(request, session, None, credentials).id


def inactive_account() -> Unauthorized:
    # A deactivated user's tokens stop working at once, not at expiry.
    return Unauthorized("access token is invalid", code="invalid_token")


def key_not_accepted() -> Forbidden:
    return Forbidden("API keys are not accepted on this route; sign in",
                     code="api_key_not_accepted")


def not_admin() -> Forbidden:
    return Forbidden("this operation needs the admin role", code="admin_required")


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a bearer access token is required", code="not_authenticated")
    return credentials.credentials


def _own_claims(settings: Settings, token: str) -> AccessClaims | None:
    """Our token's claims; ``None`` if it is not ours and an outside provider may vouch."""
    try:
        return decode_access_token(settings, token)
    except Unauthorized:
        if not external.configured(settings) or external.issued_by_us(settings, token):
            raise
        return None


def admin_user(user: Annotated[User, Depends(current_user)], session: SessionDep) -> User:
    """The current user if they are an admin (the request then sees every row); 403 otherwise."""
    if user.role != "admin":
        raise not_admin()
    rls.set_context(session, scope="admin", user_id=user.id)
    return user


def service_session(session: SessionDep) -> Session:
    """The request's session in the ``service`` scope, for requests without a signed-in user.

    Sign-in flows find accounts by email, phone, token or provider, and the Stripe webhook
    stores events: the policies let this scope see the tables those need, and no more.
    """
    rls.set_context(session, scope="service")
    return session


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
ServiceSessionDep = Annotated[Session, Depends(service_session)]
