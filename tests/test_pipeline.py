"""Enqueue after commit, through a real broker to a real worker, into the database."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from db import rls
from db.models import IntegrityCheck, User
from db.transaction import transaction
from services import task_queue
from tests.support import wait_for


def _checks(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(IntegrityCheck)) or 0


class _RolledBack(Exception):
    pass


def test_task_enqueued_in_a_transaction_runs_after_commit(db, settings, celery_worker, app,
                                                          client):
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        session.add(User(email="a@example.com", credit_balance=0))
        task_queue.enqueue(session, "maintenance.check_ledger")
        session.flush()
        time.sleep(0.5)  # a task sent before the commit would have run by now
        assert _checks(db) == 0

    wait_for(lambda: _checks(db) == 1, timeout=15, message="the worker's integrity check row")
    row = db.scalars(select(IntegrityCheck)).one()
    assert row.users_checked == 1  # the worker saw the committed user
    assert row.mismatches == 0


def test_task_enqueued_in_a_rolled_back_transaction_is_never_sent(db, settings, celery_worker,
                                                                   app, client):
    with pytest.raises(_RolledBack), transaction(settings.database_url,
                                                 acting_as=rls.OWNER) as session:
        task_queue.enqueue(session, "maintenance.check_ledger")
        raise _RolledBack
    # A marker task sent afterwards proves the queue was drained past where the first would be.
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        task_queue.enqueue(session, "maintenance.check_ledger")
    wait_for(lambda: _checks(db) >= 1, timeout=15, message="the marker task")
    time.sleep(1)  # a wrongly sent first task would land right behind the marker
    assert _checks(db) == 1


def test_work_after_an_early_rollback_never_runs_as_someone_else(settings):
    """A block whose transaction ended early (a service rolled back to release its locks)
    cannot run more SQL in a transaction it did not open: it fails loudly instead."""
    from sqlalchemy import text
    from sqlalchemy.exc import InvalidRequestError

    with pytest.raises(InvalidRequestError), transaction(settings.database_url,
                                                         acting_as=rls.NOBODY) as session:
        session.rollback()
        session.execute(text("SELECT 1"))


def test_integrity_check_counts_a_balance_that_disagrees_with_the_ledger(db, settings,
                                                                         celery_worker, client):
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        session.add(User(email="drift@example.com", credit_balance=7))
        task_queue.enqueue(session, "maintenance.check_ledger")
    wait_for(lambda: _checks(db) == 1, timeout=15, message="the integrity check")
    row = db.scalars(select(IntegrityCheck)).one()
    assert row.mismatches == 1
    assert row.details[0]["stored"] == 7 and row.details[0]["ledger_sum"] == 0


def test_send_soon_sends_in_order_from_the_background_and_survives_a_refusing_broker(settings):
    """What the event-loop routes hand off is sent in order, through the broker of the
    moment of the hand-off; a broker that refuses one task costs that task, not the thread."""
    sent: list[tuple[str, tuple]] = []

    def refusing(name: str, args: tuple, options: dict) -> None:
        raise ConnectionError("broker down")

    def recording(name: str, args: tuple, options: dict) -> None:
        time.sleep(0.01)  # slower than the hand-offs: they queue up behind each other
        sent.append((name, args))

    try:
        task_queue.install_sender(refusing)
        task_queue.send_soon("demo.lost", 0)
        task_queue.install_sender(recording)
        for n in range(1, 6):
            task_queue.send_soon("demo.kept", n)
        assert task_queue.flush(timeout=10)
    finally:
        task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(settings.redis_url)))
    assert sent == [("demo.kept", (n,)) for n in range(1, 6)]
