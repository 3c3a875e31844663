"""Request dependencies: settings, one database transaction per request, Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import redis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.client import auth_context
from db import rls
from db.models import User
from services.auth import external
from services.auth.tokens import (
    AccessClaims,
    decode_access_token,
    is_revoked,
    is_revoked_async,
)
from services.errors import Forbidden, Unauthorized
from settings import Settings


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    """The app's Redis client (rate limits, hand-offs, short-lived state)."""
    return request.app.state.redis


def get_session(request: Request) -> Iterator[Session]:
    """One transaction for the request: committed after the route returns, else rolled back.

    It runs as the application role under Row Level Security (``db.rls``) and sees no user
    rows until ``CurrentUser``/``AdminUser`` (or ``ServiceSessionDep``) says whose request it is.
    """
    settings: Settings = request.app.state.settings
    assert settings.database_url is not None
    with rls.app_transaction(settings.database_url) as session:
        yield session


def request_id_of(request: Request) -> str:
    """The id of this request (also in the ``X-Request-ID`` response header)."""
    return request.scope.get("state", {}).get("request_id", "")


async def request_id(request: Request) -> str:
    """The request id, as a dependency."""
    return request_id_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": the transaction commits before the response is sent, so a 200 is never
# answered for work that then fails to commit (the default would commit after sending).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
RequestIdDep = Annotated[str, Depends(request_id)]


_bearer = HTTPBearer(auto_error=False, description="An access token from /api/auth/login")


def current_user(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The signed-in, active user of the request's bearer token; 401 otherwise.

    Our own access token first; when an outside provider is configured, its tokens too.
    """
    token = _bearer_token(credentials)
    claims = _own_claims(settings, token)
    if claims is None:
        # Finding (or creating) the account of an outside identity looks across accounts.
        rls.set_context(session, scope="service")
        user = external.authenticate(session, auth_context(request), token)
        if user is not None:
            rls.set_context(session, scope="user", user_id=user.id)
    else:
        if is_revoked(redis_client, claims):
            raise _revoked()
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


def inactive_account() -> Unauthorized:
    # A deactivated user's tokens stop working at once, not at expiry.
    return Unauthorized("access token is invalid", code="invalid_token")


def not_admin() -> Forbidden:
    return Forbidden("this operation needs the admin role", code="admin_required")


@contextmanager
def signed_in_transaction(
    request: Request, credentials: HTTPAuthorizationCredentials | None, *, admin: bool = False
) -> Iterator[tuple[Session, User]]:
    """``SessionDep`` with ``CurrentUser`` (or ``AdminUser``) for code in one worker thread.

    For the event-loop routes' general path (an outside provider's token, an idempotent
    retry): every sync dependency would cost a thread hop of its own.
    """
    state = request.app.state
    with rls.app_transaction(state.settings.database_url) as session:
        user = current_user(request=request, session=session, settings=state.settings,
                            redis_client=state.redis, credentials=credentials)
        yield session, admin_user(user, session) if admin else user


async def own_token_claims(
    request: Request, settings: Settings, credentials: HTTPAuthorizationCredentials | None
) -> AccessClaims | None:
    """The claims of the request's access token, checked on the event loop (hot paths).

    Raises like ``current_user`` for a missing, invalid, expired or signed-out token of
    ours; ``None`` for a token an outside provider may have issued (take ``current_user``).
    The caller still has to refuse a deactivated or deleted account.
    """
    claims = _own_claims(settings, _bearer_token(credentials))
    if claims is not None and await is_revoked_async(request.state.aredis, claims):
        raise _revoked()
    return claims


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
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


def _revoked() -> Unauthorized:
    return Unauthorized("access token was signed out", code="token_revoked")


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
# The raw bearer credentials, for a route that calls ``current_user`` itself in one thread hop.
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
