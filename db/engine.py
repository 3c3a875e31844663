"""Engines and session factories (transactions are opened by ``db.transaction``).

Connections go to PostgreSQL directly, or through a pooler in transaction mode (PgBouncer
``pool_mode = transaction``: each transaction may run on another server connection). A URL
says which: ``pooled_url`` marks it (``BILLING_DATABASE_POOLER=transaction`` does that to
``BILLING_DATABASE_URL``), and every connection made from it, sync, async
(``db.aio``) or for migrations, takes its options from ``connect_args``. So the few things
a transaction pooler cannot carry are decided in one place:

- psycopg prepares a statement on the server after its fifth run by default; behind the
  pooler the next run may land on a server connection that never saw it ("prepared
  statement _pg3_0 does not exist"; PgBouncer before 1.21 forwards no protocol-level
  prepared statements): ``prepare_threshold=None`` there.
- startup ``options`` (our ``idle_in_transaction_session_timeout``) are refused by the
  pooler ("unsupported startup parameter"): behind it the guard is the pooler's own
  ``idle_transaction_timeout``, or the role's setting (README, production topology).
- nothing else needs a session: context is set per transaction (``set_config(..., true)``),
  advisory locks are transaction-level, nothing LISTENs.

The direct path keeps its options exactly, and its prepared statements.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# The query parameter that marks a URL as going through a transaction-mode pooler. Ours, not
# libpq's: ``plain_url`` and ``libpq_url`` take it off before a driver sees the URL.
POOLER_PARAM = "pooler"
TRANSACTION_POOLER = "transaction"

# Options of every connection, sync or async, direct or pooled.
_COMMON_OPTIONS: dict[str, Any] = {"application_name": "billing", "connect_timeout": 5}
_DIRECT_OPTIONS: dict[str, Any] = {
    # A transaction left open by a stuck caller would hold its locks forever.
    "options": "-c idle_in_transaction_session_timeout=60000",
}
_POOLED_OPTIONS: dict[str, Any] = {"prepare_threshold": None}


def pooled_url(url: str) -> str:
    """``url`` marked as reaching PostgreSQL through a transaction-mode pooler."""
    return make_url(url).update_query_dict({POOLER_PARAM: TRANSACTION_POOLER}).render_as_string(
        hide_password=False
    )


def behind_pooler(url: str) -> bool:
    """True when ``url`` reaches PostgreSQL through a transaction-mode pooler."""
    return make_url(url).query.get(POOLER_PARAM) == TRANSACTION_POOLER


def plain_url(url: str) -> URL:
    """``url`` as a driver takes it (without our pooler mark)."""
    return make_url(url).difference_update_query([POOLER_PARAM])


def connect_args(url: str, *, application_name: str = "billing") -> dict[str, Any]:
    """The psycopg connection options for ``url``: direct, or behind a transaction pooler."""
    extra = _POOLED_OPTIONS if behind_pooler(url) else _DIRECT_OPTIONS
    return {**_COMMON_OPTIONS, **extra, "application_name": application_name}


def create_db_engine(url: str, *, pool_size: int = 10, application_name: str = "billing") -> Engine:
    """An engine with a bounded pool that recovers from a restarted server.

    No pre-ping: it would cost a round trip on every checkout of the hot path. When the
    server restarts, the first statement on a dead connection fails (the request gets 503
    and may be retried) and SQLAlchemy then invalidates the whole pool at once.
    """
    return create_engine(
        plain_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=5,
        # A database error's message would otherwise carry the bound values (token hashes,
        # emails, request text) into the logs.
        hide_parameters=True,
        connect_args=connect_args(url, application_name=application_name),
    )


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` becomes ``postgresql://``),
    for psycopg, pgbench and psql."""
    return plain_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return create_db_engine(url)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url``."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)

