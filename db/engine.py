"""Engines and session factories (transactions are opened by ``db.transaction``)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# Every connection, sync or async (``db.aio``), is made with these libpq options.
CONNECT_OPTIONS = {
    "application_name": "billing",
    "connect_timeout": 5,
    # A transaction left open by a stuck caller would hold its locks forever.
    "options": "-c idle_in_transaction_session_timeout=60000",
}


def create_db_engine(url: str, *, pool_size: int = 10, application_name: str = "billing") -> Engine:
    """An engine with a bounded pool that recovers from a restarted server.

    No pre-ping: it would cost a round trip on every checkout of the hot path. When the
    server restarts, the first statement on a dead connection fails (the request gets 503
    and may be retried) and SQLAlchemy then invalidates the whole pool at once.
    """
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=5,
        # A database error's message would otherwise carry the bound values (token hashes,
        # emails, request text) into the logs.
        hide_parameters=True,
        connect_args={**CONNECT_OPTIONS, "application_name": application_name},
    )


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` becomes ``postgresql://``),
    for psycopg, pgbench and psql."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return create_db_engine(url)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """The process-wide session factory for ``url``."""
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)

