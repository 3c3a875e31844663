"""Alembic environment: the URL comes from the caller (db.migrate) or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import db.models  # noqa: F401  (registers every table on Base.metadata)
from db.base import Base
from db.engine import connect_args, plain_url
from db.migrate import include_name

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return url
    from settings import get_settings  # only when run by the plain alembic CLI

    url = get_settings().database_url
    if not url:
        raise SystemExit("BILLING_DATABASE_URL is not set")
    return url


def run_migrations_online() -> None:
    url = _database_url()
    # Direct or through a transaction-mode pooler alike: each migration is one transaction
    # and none needs a session of its own.
    engine = create_engine(plain_url(url), poolclass=pool.NullPool,
                           connect_args=connect_args(url, application_name="billing-migrate"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            transaction_per_migration=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
