"""Row Level Security context of the API's sessions: whose rows a transaction may touch.

Migration 0001 creates the role ``billing_app`` (owns nothing, so RLS applies to it) and
policies on every table with user data: a row is visible and writable when its user id
equals ``app.user_id``, or when ``app.scope`` is one the table's policy names (``admin``
for admin requests, ``service`` for the anonymous sign-in flows and the Stripe webhook).

An API session (``app_session``) runs every transaction it begins as that role, with its
context set in the same round trip: ``SET LOCAL`` semantics via ``set_config(..., true)``,
so nothing outlives the transaction and a pooled connection goes back clean. A session
starts with no user and no scope, so it sees no user rows until a dependency says whose
request it is (``set_context``). Sessions not made here (workers, migrations, the CLI)
connect as the owner and are not subject to the policies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.orm import Session, SessionTransaction

from db.engine import get_sessionmaker

APP_ROLE = "billing_app"  # created by migration 0001
Scope = Literal["user", "admin", "service", ""]

_INFO_KEY = "billing.rls"
SET_CONTEXT = text(
    "SELECT set_config('role', :role, true) AS role, "
    "set_config('app.user_id', :user_id, true) AS user_id, "
    "set_config('app.scope', :scope, true) AS scope"
)


@dataclass
class Context:
    """Whose request a session serves; ``version``/``applied`` track what the database has."""

    user_id: uuid.UUID | None = None
    scope: Scope = ""
    version: int = 0
    applied: int = -1


def app_session(url: str) -> Session:
    """A session whose transactions run as the application role, seeing no user rows yet."""
    return get_sessionmaker(url)(info={_INFO_KEY: Context()})


@contextmanager
def app_transaction(url: str) -> Iterator[Session]:
    """An ``app_session`` for one transaction: committed when the block ends, else rolled back."""
    session = app_session(url)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def set_context(session: Session, *, scope: Scope, user_id: uuid.UUID | None = None) -> None:
    """Make the session's transaction act for ``user_id`` with ``scope``, in one round trip."""
    ctx: Context = session.info[_INFO_KEY]  # KeyError: not an API session (fail loudly)
    ctx.user_id, ctx.scope = user_id, scope
    ctx.version += 1
    # Begins the transaction if none is open: the begin hook then sets the new context.
    conn = session.connection()
    if ctx.applied != ctx.version:
        _apply(conn, ctx)


def context_of(session: Session) -> Context | None:
    """The session's context (``None`` for an owner session)."""
    return session.info.get(_INFO_KEY)


def apply_to(conn: Connection, session: Session) -> None:
    """Give a separate transaction on ``conn`` the same role and context as ``session``."""
    ctx = context_of(session)
    if ctx is not None:
        conn.execute(SET_CONTEXT, _params(ctx))


@contextmanager
def scope(session: Session, temporary: Scope) -> Iterator[None]:
    """Act with ``temporary`` scope inside the block, then return to the previous context."""
    ctx = context_of(session)
    if ctx is None:  # an owner session is not restricted
        yield
        return
    previous = ctx.scope
    set_context(session, scope=temporary, user_id=ctx.user_id)
    try:
        yield
    except BaseException:
        # An aborted transaction runs nothing more (its rollback drops the scope with it);
        # one that is still usable must not stay in the wider scope.
        with suppress(DBAPIError, PendingRollbackError):
            set_context(session, scope=previous, user_id=ctx.user_id)
        raise
    set_context(session, scope=previous, user_id=ctx.user_id)


def params(*, scope: Scope, user_id: uuid.UUID | None) -> dict[str, str]:
    """The parameters of ``SET_CONTEXT`` for a transaction acting for ``user_id`` in ``scope``."""
    return {"role": APP_ROLE, "user_id": str(user_id) if user_id else "", "scope": scope}


def _params(ctx: Context) -> dict[str, str]:
    return params(scope=ctx.scope, user_id=ctx.user_id)


def _apply(conn: Connection, ctx: Context) -> None:
    conn.execute(SET_CONTEXT, _params(ctx))
    ctx.applied = ctx.version


@event.listens_for(Session, "after_begin")
def _on_begin(session: Session, transaction: SessionTransaction, conn: Connection) -> None:
    # Every transaction of an API session, including one begun after a commit mid-request,
    # starts as the role with the current context. Savepoints inherit it.
    ctx = context_of(session)
    if ctx is not None and not transaction.nested:
        _apply(conn, ctx)
