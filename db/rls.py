"""Row Level Security: whose rows a transaction may touch.

Migration 0001 creates the role ``billing_app`` (owns nothing, so RLS applies to it) and
policies on every table with user data: a row is visible and writable when its user id
equals ``app.user_id``, or when ``app.scope`` is one the table's policy names (``admin``
for admin requests, ``service`` for the anonymous sign-in flows and the Stripe webhook).

A transaction acts for a ``Context`` from its first statement on: ``db.transaction`` sets
it when the transaction begins and ``set_context`` changes it (``SET LOCAL`` semantics via
``set_config(..., true)``: nothing outlives the transaction, so a pooled connection goes
back clean). An API request starts as ``NOBODY`` and sees no user rows until a dependency
says whose request it is. ``OWNER`` (workers, migrations, the CLI) is not subject to the
policies. The event-loop routes send the same statement with theirs (``db.aio``), or
``SET_CONTEXT_CHECKED``, which also refuses a signed-out access token.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.orm import Session

APP_ROLE = "billing_app"  # created by migration 0001
Scope = Literal["user", "admin", "service", ""]

_INFO_KEY = "billing.rls"
SET_CONTEXT = text(
    "SELECT set_config('role', :role, true) AS role, "
    "set_config('app.user_id', :user_id, true) AS user_id, "
    "set_config('app.scope', :scope, true) AS scope"
)
# The same, and a check that the access token (``jti``) and its sign-in (``sid``) were not
# signed out: ``billing_token_live`` (migration 0011) raises SQLSTATE 28000 if either was, and
# the server then skips the rest of the transaction. For a statement that is its request's
# only round trip (``db.aio``): the check costs no round trip of its own.
SET_CONTEXT_CHECKED = text(
    "SELECT set_config('role', :role, true) AS role, "
    "set_config('app.user_id', :user_id, true) AS user_id, "
    "set_config('app.scope', :scope, true) AS scope, "
    "billing_token_live(:jti, :sid) AS live"
)


@dataclass(frozen=True)
class Context:
    """Whose transaction it is: acting for ``user_id`` (if any) with ``scope``."""

    scope: Scope = ""
    user_id: uuid.UUID | None = None


NOBODY = Context()  # the application role with no user and no scope: no user rows at all
OWNER: Context | None = None  # the tables' owner, not subject to the policies


def act_as(session: Session, context: Context) -> None:
    """Make the session's transaction act as ``context`` from now on (one round trip)."""
    session.execute(SET_CONTEXT, params(scope=context.scope, user_id=context.user_id))
    session.info[_INFO_KEY] = context


def set_context(session: Session, *, scope: Scope, user_id: uuid.UUID | None = None) -> None:
    """Change whose request the session's transaction serves (an application-role one only)."""
    if context_of(session) is None:
        raise RuntimeError("the owner's transaction has no security context to change")
    act_as(session, Context(scope=scope, user_id=user_id))


def context_of(session: Session) -> Context | None:
    """The context the session's transaction acts as (``OWNER``: not restricted)."""
    return session.info.get(_INFO_KEY)


@contextmanager
def scope(session: Session, temporary: Scope) -> Iterator[None]:
    """Act with ``temporary`` scope inside the block, then return to the previous context."""
    previous = context_of(session)
    if previous is None:  # the owner is not restricted
        yield
        return
    set_context(session, scope=temporary, user_id=previous.user_id)
    try:
        yield
    except BaseException:
        # An aborted transaction runs nothing more (its rollback drops the scope with it);
        # one that is still usable must not stay in the wider scope.
        with suppress(DBAPIError, PendingRollbackError):
            act_as(session, previous)
        raise
    act_as(session, previous)


def params(*, scope: Scope, user_id: uuid.UUID | None) -> dict[str, str]:
    """The parameters of ``SET_CONTEXT`` for a transaction acting for ``user_id`` in ``scope``."""
    return {"role": APP_ROLE, "user_id": str(user_id) if user_id else "", "scope": scope}


def checked_params(
    *, scope: Scope, user_id: uuid.UUID | None, token: tuple[str, str | None]
) -> dict[str, str | None]:
    """The parameters of ``SET_CONTEXT_CHECKED``: ``params``, and the token's (jti, sid)."""
    jti, sid = token
    return {**params(scope=scope, user_id=user_id), "jti": jti, "sid": sid}
