"""Migrations build the schema from empty and survive a downgrade/upgrade round trip."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.exc import IntegrityError, InternalError

from db.base import Base
from db.migrate import downgrade, upgrade


@pytest.fixture
def scratch_db(settings):
    url = make_url(settings.database_url)
    name = f"{url.database}_migrations"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_from_empty_creates_every_model_table(scratch_db):
    upgrade(scratch_db)
    assert set(Base.metadata.tables) <= _tables(scratch_db)


def test_downgrade_to_base_then_upgrade_round_trips(scratch_db):
    upgrade(scratch_db)
    downgrade(scratch_db, "base")
    assert _tables(scratch_db) <= {"alembic_version"}
    upgrade(scratch_db)
    assert set(Base.metadata.tables) <= _tables(scratch_db)


def test_models_and_migrations_agree(scratch_db):
    """Autogenerate finds nothing to do: the migrations describe exactly the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade(scratch_db)
    engine = create_engine(scratch_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_seeded_packages(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, credits, price_cents, currency FROM credit_packages ORDER BY sort_order")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("starter", 100, 1500, "USD"),
        ("pro", 500, 6000, "USD"),
        ("enterprise", 2000, 20000, "USD"),
    ]


def _insert_user(conn) -> str:
    return conn.execute(text("INSERT INTO users (email) VALUES ('c@example.com') RETURNING id")).scalar()


def test_ledger_is_append_only(engine):
    with engine.begin() as conn:
        uid = _insert_user(conn)
        conn.execute(
            text("INSERT INTO credit_transactions (user_id, amount, kind, balance_after) "
                 "VALUES (:u, 5, 'bonus', 5)"), {"u": uid})
    for statement in ("UPDATE credit_transactions SET amount = 6", "DELETE FROM credit_transactions"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO credit_transactions (user_id, amount, kind, balance_after) VALUES (:u, 0, 'bonus', 0)",
        "INSERT INTO credit_transactions (user_id, amount, kind, balance_after) VALUES (:u, 1, 'gift', 1)",
        "INSERT INTO credit_transactions (user_id, amount, kind, balance_after) VALUES (:u, -1, 'usage', -1)",
        "INSERT INTO payments (user_id, flow, amount_cents, currency, credits) VALUES (:u, 'checkout', -1, 'USD', 1)",
        "INSERT INTO payments (user_id, flow, amount_cents, currency, credits) VALUES (:u, 'checkout', 1, 'usd', 1)",
        "INSERT INTO payments (user_id, flow, amount_cents, currency, credits, status) VALUES (:u, 'checkout', 1, 'USD', 1, 'paid')",
        "INSERT INTO credit_packages (id, name, credits, price_cents) VALUES ('x1', 'X', 0, 100)",
        "UPDATE users SET role = 'root' WHERE id = :u",
        "INSERT INTO users (email) VALUES ('C@example.com')",
    ],
)
def test_constraints_refuse_bad_rows(engine, statement):
    with engine.begin() as conn:
        uid = _insert_user(conn)
    with pytest.raises((IntegrityError, InternalError)), engine.begin() as conn:
        conn.execute(text(statement), {"u": uid})


def test_updated_at_is_maintained_by_the_database(engine):
    with engine.begin() as conn:
        uid = _insert_user(conn)
        before = conn.execute(text("SELECT updated_at FROM users WHERE id = :u"), {"u": uid}).scalar()
    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET full_name = 'C' WHERE id = :u"), {"u": uid})
        after = conn.execute(text("SELECT updated_at FROM users WHERE id = :u"), {"u": uid}).scalar()
    assert after > before
    assert after.tzinfo is not None
