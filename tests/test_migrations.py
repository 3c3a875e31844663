"""Migrations build the schema from empty, survive a downgrade/upgrade round trip and keep the
rows a database already holds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError, InternalError
from sqlalchemy.orm import Session

from db.base import Base
from db.migrate import downgrade, include_name, upgrade


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
        context = MigrationContext.configure(conn, opts={"include_name": include_name})
        diff = compare_metadata(context, Base.metadata)
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


def _log_rows(conn) -> dict[str, list[tuple]]:
    return {table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]
            for table in ("api_usage_log", "login_history")}


def _partitioned_tables(conn) -> set[str]:
    return set(conn.scalars(text(
        "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid")))


def test_partitioning_the_logs_keeps_every_row_of_the_previous_schema(scratch_db):
    """0003 on a database holding logs written before it: every row is kept, each in the
    partition of its month, one far ahead in the default partition; a downgrade keeps them."""
    from db import partitions
    from db.base import utc_now

    upgrade(scratch_db, "0002")
    engine = create_engine(scratch_db)
    now = utc_now()
    moments = [now - timedelta(days=d) for d in (400, 95, 35, 0)] + [now + timedelta(days=800)]
    with engine.begin() as conn:
        user = conn.execute(text("INSERT INTO users (email) VALUES ('p@example.com') RETURNING id")
                            ).scalar_one()
        for i, at in enumerate(moments):
            conn.execute(text(
                "INSERT INTO api_usage_log (id, user_id, endpoint, method, credits, status_code, "
                "response_time_ms, request_id, transaction_id, created_at) VALUES "
                "(gen_random_uuid(), :u, :e, 'POST', :i, 200, 1.5, :r, :i, :at)"),
                {"u": user, "e": f"/v1/e{i}", "i": i, "r": f"req-{i}", "at": at})
            conn.execute(text(
                "INSERT INTO login_history (id, user_id, identifier, method, success, reason, ip, "
                "user_agent, created_at) VALUES (gen_random_uuid(), :u, 'p@example.com', "
                "'password', :ok, :why, '203.0.113.9', 'agent', :at)"),
                {"u": user if i % 2 else None, "ok": bool(i % 2), "why": None if i % 2 else "bad",
                 "at": at})
        before = _log_rows(conn)

    upgrade(scratch_db)

    with engine.connect() as conn:
        assert _log_rows(conn) == before
        assert _partitioned_tables(conn) == {"api_usage_log", "login_history"}
        for table in ("api_usage_log", "login_history"):
            where = dict(conn.execute(text(
                f"SELECT created_at, tableoid::regclass::text FROM {table}")).all())
            assert [where[at] for at in moments] == [
                *(partitions.partition_name(table, partitions.month_of(at)) for at in moments[:4]),
                partitions.default_partition(table),
            ]
            # One partition for every month from the oldest row's to the next one, no gap.
            first, this = partitions.month_of(moments[0]), partitions.month_of(now)
            expected = [first]
            while expected[-1] < partitions.add_months(this, 1):
                expected.append(partitions.add_months(expected[-1], 1))
            with Session(conn) as session:
                assert partitions.months(session, table) == expected

    downgrade(scratch_db, "0002")
    with engine.connect() as conn:
        assert _log_rows(conn) == before
        assert _partitioned_tables(conn) == set()
    engine.dispose()
