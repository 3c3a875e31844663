"""The logs' monthly partitions: made ahead, a safety net for the months without one, dropped
whole by retention, and read through their indexes.

DDL runs on a database of the test's own (``scratch_db``), migrated to the head, so the
shared test database keeps its partitions; only beat's own tasks run there, through the
session's worker (they add the coming months and drop nothing within the retention window).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from db import partitions, rls
from db.base import utc_now
from db.engine import get_engine
from db.migrate import upgrade
from db.models import ApiUsageLog, UsageDaily
from db.transaction import transaction
from services import task_queue
from services.admin import users as admin_users
from services.logs import logstream, retention, usage, writer
from tests.factories import make_user
from tests.support import wait_for

NOW = datetime(2031, 5, 15, 12, 0, tzinfo=UTC)  # months no partition exists for yet


@pytest.fixture
def logs_db(scratch_db) -> Iterator[str]:
    """A database of the test's own at the head; its URL."""
    upgrade(scratch_db)
    yield scratch_db
    get_engine(scratch_db).dispose()  # the next test's database has the same name


def _owner(url: str) -> AbstractContextManager[Session]:
    return transaction(url, acting_as=rls.OWNER)


def _user(url: str) -> uuid.UUID:
    with _owner(url) as session:
        return session.execute(text(
            "INSERT INTO users (email) VALUES (:e) RETURNING id"), {"e": f"{uuid.uuid4()}@x.io"}
        ).scalar_one()


def _write(url: str, user_id: uuid.UUID, *moments: datetime) -> None:
    """Usage and sign-in records at ``moments``, written as the log drain writes them."""
    with _owner(url) as session:
        writer.write_usage(session, [
            logstream.UsageRecord(id=uuid.uuid4(), created_at=at, user_id=user_id,
                                  endpoint="/v1/a", credits=1, status_code=200)
            for at in moments])
        writer.write_logins(session, [
            logstream.LoginRecord(id=uuid.uuid4(), created_at=at, user_id=user_id,
                                  method="password", success=True)
            for at in moments])


def _placement(url: str, table: str) -> dict[datetime, str]:
    with _owner(url) as session:
        return dict(session.execute(text(  # noqa: S608
            f"SELECT created_at, tableoid::regclass::text FROM {table}")).all())


def test_a_row_of_a_month_without_partition_is_stored_and_moves_when_its_partition_is_made(logs_db):
    user = _user(logs_db)
    june = datetime(2031, 6, 10, tzinfo=UTC)
    _write(logs_db, user, june, june)  # nothing refused, though no partition covers June

    assert set(_placement(logs_db, "api_usage_log").values()) == {"api_usage_log_default"}

    created = retention.prepare(logs_db, now=NOW)

    assert created == [partitions.partition_name(t, m) for t in partitions.TABLES
                       for m in (NOW.date().replace(day=1), june.date().replace(day=1),
                                 date(2031, 7, 1))]
    for table in partitions.TABLES:
        assert set(_placement(logs_db, table).values()) == {f"{table}_p2031_06"}
    with _owner(logs_db) as session:
        assert session.scalar(select(func.count()).select_from(ApiUsageLog)) == 2
    assert retention.prepare(logs_db, now=NOW) == []  # made already: nothing to do


def test_a_re_delivered_record_is_written_once_whichever_partition_holds_it(logs_db):
    user = _user(logs_db)
    record = logstream.UsageRecord(id=uuid.uuid4(), created_at=datetime(2031, 6, 2, tzinfo=UTC),
                                   user_id=user, endpoint="/v1/a", credits=3, status_code=200)
    with _owner(logs_db) as session:
        assert writer.write_usage(session, [record]) == (1, [])  # into the default
    retention.prepare(logs_db, now=NOW)  # June's partition takes it over
    with _owner(logs_db) as session:
        assert writer.write_usage(session, [record]) == (0, [])
    with _owner(logs_db) as session:
        assert session.scalar(select(func.sum(UsageDaily.calls))) == 1


def test_retention_drops_whole_months_past_the_window_and_keeps_the_rest(logs_db):
    user = _user(logs_db)
    with _owner(logs_db) as session:  # NOW and the months before, as beat made them
        for back in range(6):
            partitions.create(session, "api_usage_log",
                              partitions.add_months(partitions.month_of(NOW), -back))
            partitions.create(session, "login_history",
                              partitions.add_months(partitions.month_of(NOW), -back))
    cut = NOW - timedelta(days=90)  # 2031-02-14 12:00
    old_in_kept_month = datetime(2031, 2, 2, tzinfo=UTC)  # older than the cut, month straddles
    ancient = [datetime(2029, 3, d, tzinfo=UTC) for d in range(1, 6)]  # no partition: default
    _write(logs_db, user, datetime(2030, 12, 20, tzinfo=UTC), datetime(2031, 1, 31, tzinfo=UTC),
           old_in_kept_month, cut + timedelta(days=1), NOW, *ancient,
           datetime(2035, 1, 1, tzinfo=UTC))

    purged = retention.purge(logs_db, retention_days=90, batch_size=2, now=NOW)

    # With the months the migration made (this real month and the next), long past at NOW.
    made = [partitions.add_months(partitions.month_of(utc_now()), k) for k in (0, 1)]
    assert purged.dropped == [
        partitions.partition_name(t, m) for t in partitions.TABLES
        for m in (*made, date(2030, 12, 1), date(2031, 1, 1))]
    assert purged.deleted == {"api_usage_log": 5, "login_history": 5}
    for table in partitions.TABLES:
        assert sorted(_placement(logs_db, table).items()) == [
            (old_in_kept_month, f"{table}_p2031_02"),
            (cut + timedelta(days=1), f"{table}_p2031_02"),
            (NOW, f"{table}_p2031_05"),
            (datetime(2035, 1, 1, tzinfo=UTC), f"{table}_default"),
        ]
    with _owner(logs_db) as session:
        assert partitions.months(session, "api_usage_log")[0] == date(2031, 2, 1)
        assert session.scalar(select(func.sum(UsageDaily.calls))) == 11  # statistics outlive rows
    again = retention.purge(logs_db, retention_days=90, now=NOW)
    assert (again.dropped, again.deleted) == ([], {"api_usage_log": 0, "login_history": 0})


def _plans(url: str, run: Callable[[Session], object]) -> list[str]:
    """The plans of the log queries ``run`` makes, as PostgreSQL would run them."""
    statements: list[tuple[str, object]] = []
    with _owner(url) as session:
        engine = session.get_bind()

        def capture(conn, cursor, statement, parameters, context, executemany):
            if re.search(r"\bFROM (api_usage_log|login_history)\b", statement):
                statements.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            run(session)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        # Without this the planner may prefer a sequential scan of a small partition; with
        # it, one still shows when no index fits the query.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        raw = session.connection()
        return ["\n".join(row[0] for row in raw.exec_driver_sql("EXPLAIN " + sql, params))
                for sql, params in statements]


def test_admin_queries_use_the_partitions_indexes_and_skip_months_outside_their_range(logs_db):
    users = [_user(logs_db) for _ in range(20)]
    with _owner(logs_db) as session:
        for back in range(1, 3):
            for table in partitions.TABLES:
                partitions.create(session, table,
                                  partitions.add_months(partitions.month_of(NOW), -back))
    retention.prepare(logs_db, now=NOW)
    for i, user in enumerate(users):
        _write(logs_db, user, *(NOW - timedelta(days=d, minutes=i) for d in range(0, 75, 3)))
    with _owner(logs_db) as session:
        session.execute(text("ANALYZE api_usage_log"))
        session.execute(text("ANALYZE login_history"))
    april = (datetime(2031, 4, 3, tzinfo=UTC), datetime(2031, 4, 20, tzinfo=UTC))

    plans = _plans(logs_db, lambda s: (
        admin_users.user_detail(s, users[3]),  # the user's page: recent usage and sign-ins
        usage.records(s, user_id=users[3]),
        usage.records(s, endpoint="/v1/a", limit=10),
        usage.records(s, since=april[0], until=april[1]),
    ))

    # The user's page (recent usage, recent sign-ins), then the three usage listings: each
    # reads its partitions through the index made for it, none reads a partition whole.
    made_for = ["api_usage_log_p2031_05_user_id_created_at_idx",
                "login_history_p2031_05_user_id_created_at_idx",
                "api_usage_log_p2031_05_user_id_created_at_idx",
                "api_usage_log_p2031_05_endpoint_created_at_idx",
                "api_usage_log_p2031_04_created_at_idx"]
    assert len(plans) == len(made_for)
    for plan, index in zip(plans, made_for, strict=True):
        assert "Seq Scan" not in plan and index in plan, plan
    ranged = plans[-1]
    assert "api_usage_log_p2031_04" in ranged
    assert not re.search(r"api_usage_log_p2031_0[35]", ranged), ranged  # pruned


def test_beats_partition_and_retention_tasks_run_on_a_worker(db, settings, celery_worker):
    task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(settings.redis_url)))
    user = make_user(db)
    long_ago = utc_now() - timedelta(days=400)  # no partition: in the default one
    writer.write_usage(db, [logstream.UsageRecord(
        id=uuid.uuid4(), created_at=long_ago, user_id=user.id, endpoint="/v1/a",
        status_code=200)])
    db.commit()
    ahead = partitions.add_months(partitions.month_of(utc_now()), retention.MONTHS_AHEAD)

    task_queue.send_now("logs.partitions")
    task_queue.send_now("logs.purge")

    def done() -> bool:
        db.rollback()
        made = all(ahead in partitions.months(db, table) for table in partitions.TABLES)
        return made and db.scalar(select(func.count()).select_from(ApiUsageLog)) == 0

    wait_for(done, timeout=30, message="next months' partitions made, the old row purged")
