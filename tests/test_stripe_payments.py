"""Purchases settled by Stripe events through a real worker: each payment grants once."""

from __future__ import annotations

import random
import threading

import httpx
from sqlalchemy import func, select

from db.models import CreditTransaction, Payment, StripeEvent, User
from tests import stripe_events as se
from tests.factories import make_payment, make_user
from tests.support import wait_for


def _event_status(db, event_id: str) -> str | None:
    db.expire_all()
    row = db.get(StripeEvent, event_id)
    return row.status if row else None


def _done(db, *event_ids: str) -> bool:
    return all(_event_status(db, e) in ("processed", "ignored", "failed") for e in event_ids)


def _wait_done(db, *event_ids: str, timeout: float = 30) -> None:
    wait_for(lambda: _done(db, *event_ids), timeout=timeout, message=f"events {event_ids}")


def _balance(db, user) -> int:
    db.expire_all()
    return db.get(User, user.id).credit_balance


def _ledger(db, user) -> list[tuple[str, int]]:
    db.expire_all()
    rows = db.execute(
        select(CreditTransaction.kind, CreditTransaction.amount)
        .where(CreditTransaction.user_id == user.id)
        .order_by(CreditTransaction.id)
    )
    return [tuple(r) for r in rows]


def test_payment_intent_succeeded_grants_the_package_credits(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, package_id="starter")
    evt = se.event("payment_intent.succeeded", se.payment_intent(payment))

    assert se.deliver(client, evt).status_code == 200
    _wait_done(db, evt["id"])

    assert _event_status(db, evt["id"]) == "processed"
    db.refresh(payment)
    assert payment.status == "succeeded" and payment.succeeded_at is not None
    assert _ledger(db, user) == [("purchase", 100)]
    assert _balance(db, user) == 100
    entry = db.scalars(select(CreditTransaction).where(CreditTransaction.user_id == user.id)).one()
    assert (entry.reference_type, entry.reference_id) == ("payment", str(payment.id))
    assert entry.dedupe_key == f"payment:{payment.id}"


def test_every_success_event_of_one_payment_in_any_order_grants_once(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, package_id="pro", flow="checkout")
    events = [
        se.event("checkout.session.completed", se.checkout_session(payment)),
        se.event("checkout.session.async_payment_succeeded", se.checkout_session(payment)),
        se.event("payment_intent.succeeded", se.payment_intent(payment)),
    ]
    random.shuffle(events)
    for evt in events * 2:
        assert se.deliver(client, evt).status_code == 200
    _wait_done(db, *(e["id"] for e in events))

    assert [_event_status(db, e["id"]) for e in events] == ["processed"] * 3
    assert _ledger(db, user) == [("purchase", 500)]
    db.refresh(payment)
    assert payment.status == "succeeded"


def test_same_event_delivered_50_times_concurrently_grants_once(db, live_api, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, package_id="enterprise")
    evt = se.event("payment_intent.succeeded", se.payment_intent(payment))
    start = threading.Barrier(50)
    answers: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=live_api, timeout=30) as http:
            start.wait()
            answers.append(se.deliver(http, evt).status_code)

    threads = [threading.Thread(target=post) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert answers == [200] * 50
    _wait_done(db, evt["id"])
    assert _ledger(db, user) == [("purchase", 2000)]
    assert db.scalar(select(func.count()).select_from(StripeEvent)) == 1


def test_checkout_completed_unpaid_waits_for_the_async_result(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, flow="checkout")
    pending = se.event(
        "checkout.session.completed", se.checkout_session(payment, payment_status="unpaid")
    )
    failed = se.event("checkout.session.async_payment_failed", se.checkout_session(payment))
    se.deliver(client, pending)
    _wait_done(db, pending["id"])
    db.refresh(payment)
    assert payment.status == "pending" and _balance(db, user) == 0

    se.deliver(client, failed)
    _wait_done(db, failed["id"])
    db.refresh(payment)
    assert payment.status == "failed" and _ledger(db, user) == []


def test_failure_or_expiry_after_success_never_undoes_it(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, flow="checkout")
    paid = se.event("checkout.session.completed", se.checkout_session(payment))
    se.deliver(client, paid)
    _wait_done(db, paid["id"])
    late = [
        se.event("payment_intent.payment_failed",
                 se.payment_intent(payment, status="requires_payment_method", error="declined")),
        se.event("checkout.session.expired", se.checkout_session(payment, status="expired")),
        se.event("checkout.session.async_payment_failed", se.checkout_session(payment)),
    ]
    for evt in late:
        se.deliver(client, evt)
    _wait_done(db, *(e["id"] for e in late))

    db.refresh(payment)
    assert payment.status == "succeeded" and payment.failure_reason is None
    assert _ledger(db, user) == [("purchase", 100)]


def test_failed_attempt_then_success_grants(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user)
    failed = se.event(
        "payment_intent.payment_failed",
        se.payment_intent(payment, status="requires_payment_method", error="Your card was declined."),
    )
    se.deliver(client, failed)
    _wait_done(db, failed["id"])
    db.refresh(payment)
    assert payment.status == "failed" and payment.failure_reason == "Your card was declined."

    paid = se.event("payment_intent.succeeded", se.payment_intent(payment))
    se.deliver(client, paid)
    _wait_done(db, paid["id"])
    db.refresh(payment)
    assert payment.status == "succeeded" and _balance(db, user) == 100


def test_expired_checkout_marks_the_pending_payment_expired(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user, flow="checkout")
    evt = se.event(
        "checkout.session.expired", se.checkout_session(payment, payment_status="unpaid", status="expired")
    )
    se.deliver(client, evt)
    _wait_done(db, evt["id"])
    db.refresh(payment)
    assert payment.status == "expired" and _balance(db, user) == 0


def test_event_matched_by_stripe_id_when_metadata_is_missing(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user)
    evt = se.event("payment_intent.succeeded", se.payment_intent(payment, with_metadata=False))
    se.deliver(client, evt)
    _wait_done(db, evt["id"])
    assert _balance(db, user) == 100


def test_amount_below_the_price_is_parked_as_failed_and_grants_nothing(client, db, celery_worker):
    user = make_user(db)
    payment = make_payment(db, user)
    evt = se.event("payment_intent.succeeded", se.payment_intent(payment, amount=1))
    se.deliver(client, evt)
    _wait_done(db, evt["id"])

    row = db.get(StripeEvent, evt["id"])
    assert row.status == "failed" and row.attempts == 1
    assert row.last_error.startswith("Rejected: ") and "1500" in row.last_error
    db.refresh(payment)
    assert payment.status == "pending" and _balance(db, user) == 0


def test_unknown_type_and_foreign_objects_are_ignored(client, db, celery_worker):
    unknown = se.event("customer.created", se.stripe_object("customer"))
    foreign = se.event(
        "payment_intent.succeeded", se.stripe_object("payment_intent", id="pi_not_ours", metadata={})
    )
    se.deliver(client, unknown)
    se.deliver(client, foreign)
    _wait_done(db, unknown["id"], foreign["id"])
    assert _event_status(db, unknown["id"]) == "ignored"
    assert _event_status(db, foreign["id"]) == "ignored"
    assert db.scalar(select(func.count()).select_from(CreditTransaction)) == 0


def test_processing_an_event_twice_by_hand_changes_nothing_the_second_time(db, settings):
    from services.stripe_events.process import process

    user = make_user(db)
    payment = make_payment(db, user)
    evt = se.event("payment_intent.succeeded", se.payment_intent(payment))
    # Stored as the webhook stores it, minus the enqueue: no worker may race this test.
    db.add(StripeEvent(id=evt["id"], type=evt["type"], livemode=False,
                       stripe_created=evt["created"], payload=evt))
    db.commit()
    assert process(db, event_id=evt["id"], settings=settings) == "processed"
    db.commit()
    assert process(db, event_id=evt["id"], settings=settings) == "processed"
    db.commit()
    assert _ledger(db, user) == [("purchase", 100)]
    assert db.get(StripeEvent, evt["id"]).attempts == 1
    assert db.get(Payment, payment.id).status == "succeeded"
