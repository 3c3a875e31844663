"""The worker's processing of one stored event, called in-process (no broker, no worker).

Events are stored the way the webhook stores them, minus the enqueue, so the session's
running worker never sees them: each test drives ``process`` itself and controls the
transactions around it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from celery.app import trace
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from db.models import CreditTransaction, Payment, StripeEvent, User
from services.stripe_events.process import process
from tests import stripe_events as se
from tests.factories import make_payment, make_user
from tests.support import scratch_session


def _store(db: Session, evt: dict[str, Any]) -> str:
    db.add(StripeEvent(id=evt["id"], type=evt["type"], livemode=False,
                       stripe_created=evt["created"], payload=evt))
    db.commit()
    return evt["id"]


def _ledger(db: Session, user: User) -> list[tuple[str, int]]:
    rows = db.execute(
        select(CreditTransaction.kind, CreditTransaction.amount)
        .where(CreditTransaction.user_id == user.id)
        .order_by(CreditTransaction.id)
    )
    return [tuple(r) for r in rows]


def test_an_event_held_by_another_worker_is_busy_at_once_and_processed_later(db, settings):
    user = make_user(db)
    payment = make_payment(db, user)
    event_id = _store(db, se.event("payment_intent.succeeded", se.payment_intent(payment)))

    with scratch_session(settings.database_url) as holder, scratch_session(settings.database_url) as other:
        holder.execute(
            select(StripeEvent.id).where(StripeEvent.id == event_id).with_for_update()
        ).one()
        # SKIP LOCKED: the second worker does not wait for the first one's transaction.
        outcome: list[str] = []
        worker = threading.Thread(
            target=lambda: outcome.append(process(other, event_id=event_id, settings=settings))
        )
        worker.start()
        worker.join(10)
        assert outcome == ["busy"]
        other.rollback()
        holder.rollback()
        assert process(other, event_id=event_id, settings=settings) == "processed"
        other.commit()

    assert _ledger(db, user) == [("purchase", 100)]
    assert process(db, event_id="evt_test_never_stored", settings=settings) == "missing"


def test_a_failing_handler_leaves_the_event_pending_and_moves_nothing(db, settings):
    user = make_user(db)
    payment = make_payment(db, user)
    # The metadata names a payment that does not exist (yet): NotReady, the task retries.
    intent = se.payment_intent(payment)
    intent["metadata"]["payment_id"] = "00000000-0000-4000-8000-000000000000"
    event_id = _store(db, se.event("payment_intent.succeeded", intent))

    with scratch_session(settings.database_url) as session:
        with pytest.raises(Exception, match="does not exist"):
            process(session, event_id=event_id, settings=settings)
        session.rollback()

    db.expire_all()
    row = db.get(StripeEvent, event_id)
    assert (row.status, row.attempts) == ("pending", 0)
    assert _ledger(db, user) == []


def test_processing_marks_the_event_and_the_payment_and_counts_the_try(db, settings):
    user = make_user(db)
    payment = make_payment(db, user)
    event_id = _store(db, se.event("payment_intent.succeeded", se.payment_intent(payment)))

    with scratch_session(settings.database_url) as session:
        assert process(session, event_id=event_id, settings=settings) == "processed"
        session.commit()

    db.expire_all()
    row = db.get(StripeEvent, event_id)
    assert (row.status, row.attempts, row.last_error) == ("processed", 1, None)
    assert row.processed_at is not None
    paid = db.get(Payment, payment.id)
    assert paid.status == "succeeded" and paid.succeeded_at is not None
    assert paid.stripe_charge_id == payment.stripe_charge_id
    assert db.get(User, user.id).credit_balance == 100


def test_a_failure_after_success_changes_no_state_but_links_the_new_charge(db, settings):
    user = make_user(db)
    payment = make_payment(db, user)
    paid = _store(db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    with scratch_session(settings.database_url) as session:
        process(session, event_id=paid, settings=settings)
        session.commit()
    db.execute(Payment.__table__.update().where(Payment.id == payment.id)
               .values(stripe_charge_id=None))
    db.commit()
    intent = se.payment_intent(payment, status="requires_payment_method", error="declined")
    intent["latest_charge"] = "ch_test_second_attempt"
    failed = _store(db, se.event("payment_intent.payment_failed", intent))

    with scratch_session(settings.database_url) as session:
        assert process(session, event_id=failed, settings=settings) == "processed"
        session.commit()

    db.expire_all()
    row = db.get(Payment, payment.id)
    assert (row.status, row.failure_reason) == ("succeeded", None)
    assert row.stripe_charge_id == "ch_test_second_attempt"
    assert _ledger(db, user) == [("purchase", 100)]


def test_a_skipped_event_is_ignored_with_its_reason_and_writes_nothing_else(db, settings):
    foreign = se.stripe_object("payment_intent", id="pi_test_not_ours", metadata={})
    event_id = _store(db, se.event("payment_intent.succeeded", foreign))

    with scratch_session(settings.database_url) as session:
        assert process(session, event_id=event_id, settings=settings) == "ignored"
        session.commit()

    db.expire_all()
    row = db.get(StripeEvent, event_id)
    assert (row.status, row.attempts) == ("ignored", 1)
    assert "not one of our payments" in row.last_error


def test_a_purchase_is_settled_in_few_statements(db, settings):
    """The hot path's round trips: claim and mark the event, lock the payment, the
    ledger's grant (one statement: the payment's lock orders its key), write the payment;
    plus BEGIN/COMMIT. A regression shows up here."""
    user = make_user(db)
    payment = make_payment(db, user)
    event_id = _store(db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    statements: list[str] = []

    def count(conn, cursor, statement, *_: Any) -> None:
        statements.append(statement.split()[0].upper())

    with scratch_session(settings.database_url) as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert process(session, event_id=event_id, settings=settings) == "processed"
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", count)

    writes = [s for s in statements if s in ("UPDATE", "INSERT", "WITH")]
    # The ledger's grant is one statement (WITH ... UPDATE users ... INSERT); the event
    # (claimed and marked) and the payment are one UPDATE each.
    assert writes.count("UPDATE") == 2, statements
    # Plus the outgoing webhooks' outbox: payment.succeeded and its deliveries, one statement.
    assert len(statements) <= 5, statements


def test_the_worker_drops_only_the_routine_lines_of_per_event_tasks():
    from workers.app import _QuietRoutineLines  # the worker's settings are read on import

    def record(msg: str, name: str) -> logging.LogRecord:
        return logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, msg,
                                 ({"id": "x", "name": name, "args": "", "kwargs": ""},), None)

    quiet = _QuietRoutineLines()
    assert not quiet.filter(record(trace.LOG_RECEIVED, "stripe.process_event"))
    assert not quiet.filter(record(trace.LOG_SUCCESS, "stripe.process_event"))
    assert quiet.filter(record(trace.LOG_RETRY, "stripe.process_event"))
    assert quiet.filter(record(trace.LOG_SUCCESS, "stats.snapshot"))
    assert quiet.filter(record(trace.LOG_FAILURE, "stripe.process_event"))
