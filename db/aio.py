"""The API's asynchronous database access, for the routes on the hot path.

Most routes run in a worker thread with a SQLAlchemy session (``db.transaction``). The few
that are called at high rates (spending credits, storing Stripe webhooks, reading the admin
statistics) run their one statement on the event loop instead, with
psycopg's async connections from a pool: no thread hand-off, no ORM, and the transaction's
Row Level Security context sent in the same round trip as its statement (pipeline mode).
They keep the sessions' rules: the application role, ``set_config(..., true)`` so nothing
outlives the transaction, the same connection options (``db.engine.connect_args``). Nothing
here needs the server connection to outlive the pipeline's implicit transaction, so it works
behind a transaction-mode pooler as it does direct.

The SQL is a named ``text()`` statement of its domain module, rendered here for psycopg
(``render``); the ledger's also serves its session side (``ledger.post``), the inbox's its
reconciliation.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import TextClause
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from db import rls
from db.engine import connect_args, libpq_url

_DIALECT = psycopg_dialect.dialect()
APPLICATION_NAME = "billing-api-async"


@lru_cache(maxsize=64)
def render(statement: TextClause) -> str:
    """``statement`` as psycopg runs it (``:name`` parameters become ``%(name)s``)."""
    return str(statement.compile(dialect=_DIALECT))


class AsyncDatabase:
    """A pool of async connections for one API process, opened and closed with its lifespan."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        self.pool = AsyncConnectionPool(
            libpq_url(url),
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=5,
            max_lifetime=1800,
            # Autocommit: ``fetchone``'s pipeline is the transaction (implicit, up to its Sync).
            kwargs={
                **connect_args(url, application_name=application_name),
                "row_factory": namedtuple_row,
                "autocommit": True,
            },
            # A connection that comes back broken (server restarted) is thrown away; the next
            # checkout gets a fresh one. No per-checkout ping: that would be a round trip.
            reconnect_timeout=30,
        )
        self._checks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def fetchone(
        self,
        statement: TextClause,
        params: dict[str, Any],
        *,
        scope: rls.Scope,
        user_id: uuid.UUID | None = None,
        then: tuple[TextClause, dict[str, Any]] | None = None,
        every: bool = False,
        token: tuple[str, str | None] | None = None,
    ) -> Any:
        """Run ``statement`` as a transaction of its own; its first row (a named tuple) or None.

        The transaction runs as the application role acting for ``user_id`` with ``scope``.
        The context and the statement go out together in pipeline mode, up to one Sync: the
        server runs them as one implicit transaction, committed at the Sync (or rolled back,
        if the statement fails, and the error raised), so the context applies to the
        statement and ends with it. One round trip, no BEGIN or COMMIT of their own.
        ``then``: one more statement in the same transaction, after ``statement`` (its
        failure undoes both). ``token``: the (jti, sid) of the request's access token, checked
        in the context's statement; if it was signed out, nothing runs and
        ``psycopg.errors.InvalidAuthorizationSpecification`` is raised.
        """
        context = _context(scope=scope, user_id=user_id, token=token)
        async with self.pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute(*context)
                    cursor = await conn.execute(render(statement), params)
                    if then is not None:
                        await conn.execute(render(then[0]), then[1])
            except psycopg.OperationalError:
                if conn.broken:
                    # The server went away (restart, failover): the idle connections went
                    # with it. Sort them out now rather than fail one request for each.
                    self._checks.add(task := asyncio.create_task(self.pool.check()))
                    task.add_done_callback(self._checks.discard)
                raise
            return await (cursor.fetchall() if every else cursor.fetchone())

    async def fetchall(
        self,
        statement: TextClause,
        params: dict[str, Any],
        *,
        scope: rls.Scope,
        user_id: uuid.UUID | None = None,
        token: tuple[str, str | None] | None = None,
    ) -> list[Any]:
        """``fetchone``, with every row of the result."""
        rows: list[Any] = await self.fetchone(statement, params, scope=scope, user_id=user_id,
                                              every=True, token=token)
        return rows


def _context(
    *, scope: rls.Scope, user_id: uuid.UUID | None, token: tuple[str, str | None] | None
) -> tuple[str, dict[str, Any]]:
    """The statement that opens the transaction: its security context, and the token's check
    when there is a token to check (run first, so a refused token stops what follows)."""
    if token is None:
        return render(rls.SET_CONTEXT), rls.params(scope=scope, user_id=user_id)
    return (render(rls.SET_CONTEXT_CHECKED),
            rls.checked_params(scope=scope, user_id=user_id, token=token))
