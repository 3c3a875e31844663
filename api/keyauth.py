"""Routes a seller's servers call take an API key (``Bearer bk_...``) as well as a token.

A key works on the routes its scopes name and nowhere else (403 ``api_key_scope_missing``
here, 403 ``api_key_not_accepted`` on every other route); its user is the request's user,
under Row Level Security as a signed-in user would be. A server key (made by an admin, no
user of its own) works only where a request may name the user: ``POST /usage/events``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.deps import (
    BearerDep,
    SessionDep,
    bearer_token,
    current_user,
    signed_in_user_id,
    token_claims,
    unrevoked_claims,
)
from db import rls
from services.apikeys import keys as apikeys
from services.apikeys.keys import KeyInfo
from services.auth.tokens import AccessClaims
from services.errors import Forbidden


@dataclass(frozen=True)
class Principal:
    """Who makes the request: a user (``key`` None: signed in), or a key and its user.

    ``user_id`` None: a server key, which names the user of each thing it does."""

    user_id: uuid.UUID | None
    key: KeyInfo | None = None
    # Our own access token, when its revocation is left to the caller's statement
    # (``principal_on_loop(..., revocation_in_statement=True)``).
    unchecked: AccessClaims | None = None


def _server_key_refused() -> Forbidden:
    return Forbidden("a server key may only send metered events (POST /usage/events)",
                     code="server_key_not_accepted")


async def _claims_unless_key(request: Request, credentials: BearerDep) -> AccessClaims | None:
    if credentials is not None and apikeys.is_key(credentials.credentials):
        return None
    return await token_claims(request, credentials)


def _principal(scope: str) -> Callable[..., Principal]:
    def principal(
        request: Request,
        session: SessionDep,
        credentials: BearerDep,
        claims: Annotated[AccessClaims | None, Depends(_claims_unless_key)],
    ) -> Principal:
        token = bearer_token(credentials)
        if apikeys.is_key(token):
            key = apikeys.authenticate(session, secret=token, scope=scope)
            if key.user_id is None:
                raise _server_key_refused()
            rls.set_context(session, scope="user", user_id=key.user_id)
            request.state.user_id = key.user_id  # for the usage middleware
            return Principal(user_id=key.user_id, key=key)
        return Principal(user_id=current_user(request, session, claims, credentials).id)

    return principal


async def principal_on_loop(request: Request, credentials: BearerDep, *, scope: str,
                            server_keys: bool = False,
                            revocation_in_statement: bool = False) -> Principal:
    """The request's principal for the routes on the event loop (a key: one round trip).

    ``revocation_in_statement``: our own token's revocation is not checked here (a Redis
    round trip) but left to the route's one database statement, which gets the claims as
    ``Principal.unchecked`` and must be given them (``ledger.spend``'s ``token``).
    """
    if credentials is not None and apikeys.is_key(credentials.credentials):
        key = await apikeys.authenticate_async(request.state.db, secret=credentials.credentials,
                                               scope=scope)
        if key.user_id is None and not server_keys:
            raise _server_key_refused()
        request.state.user_id = key.user_id
        return Principal(user_id=key.user_id, key=key)
    if revocation_in_statement:
        claims = unrevoked_claims(request, credentials)
        if claims is not None:
            request.state.user_id = claims.user_id  # for the usage middleware
            return Principal(user_id=claims.user_id, unchecked=claims)
    return Principal(user_id=await signed_in_user_id(request, credentials))


ReaderDep = Annotated[Principal, Depends(_principal(apikeys.READ))]
SpenderDep = Annotated[Principal, Depends(_principal(apikeys.SPEND))]
