"""A refund that fails or is canceled after it was counted gives its credits back, once; one
that fails before it was counted never takes any (issue 16)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from db import rls
from db.models import CreditGrant, CreditTransaction, Payment, StripeEvent, StripeRefund, User
from db.transaction import transaction
from services.credits import integrity
from tests import stripe_events as se
from tests.factories import make_payment, make_user
from tests.support import wait_for


@pytest.fixture(autouse=True)
def _ledger_consistent(settings) -> Iterator[None]:
    yield
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        assert integrity.check_ledger(session).mismatches == []


def _send(client, db, *events, expect: str = "processed") -> None:
    for evt in events:
        assert se.deliver(client, evt).status_code == 200

    def done() -> bool:
        db.expire_all()
        rows = [db.get(StripeEvent, e["id"]) for e in events]
        return all(r is not None and r.status != "pending" for r in rows)

    wait_for(done, timeout=30, message="events processed")
    assert [db.get(StripeEvent, e["id"]).status for e in events] == [expect] * len(events)


def _state(db, user, payment) -> tuple[int, str, int, int]:
    db.expire_all()
    p = db.get(Payment, payment.id)
    return (db.get(User, user.id).credit_balance, p.status, p.refunded_cents, p.credits_refunded)


def _ledger(db, user) -> list[tuple[str, int]]:
    rows = db.execute(select(CreditTransaction.kind, CreditTransaction.amount)
                      .where(CreditTransaction.user_id == user.id)
                      .order_by(CreditTransaction.id))
    return [tuple(r) for r in rows]


def _paid_with_refund(client, db, stripe_client, cents: int) -> tuple[User, Payment, dict]:
    """A paid starter payment (100 credits for 1500) and a refund of it made in Stripe."""
    user = make_user(db)
    payment = make_payment(db, user, stripe_client=stripe_client, payment_method="pm_card_visa")
    _send(client, db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    refund = stripe_client.v1.refunds.create(
        params={"payment_intent": payment.stripe_payment_intent_id, "amount": cents}
    ).to_dict(for_json=True)
    db.expire_all()
    payment = db.get(Payment, payment.id)
    return user, payment, refund


def _ended(refund: dict, status: str, event_type: str = "refund.updated") -> dict:
    return se.event(event_type, {**refund, "status": status, "failure_reason": "lost_or_stolen_card"})


def test_a_refund_that_fails_after_it_was_counted_gives_its_credits_back_once(
    client, db, celery_worker, stripe_client
):
    user, payment, refund = _paid_with_refund(client, db, stripe_client, 300)
    _send(client, db, se.event("refund.created", refund))
    assert _state(db, user, payment) == (80, "partially_refunded", 300, 20)

    # The failure, three times (two event types, one of them redelivered): given back once.
    failed = _ended(refund, "failed")
    _send(client, db, failed, _ended(refund, "failed", "charge.refund.updated"))
    _send(client, db, failed)
    assert _state(db, user, payment) == (100, "succeeded", 0, 0)
    assert _ledger(db, user) == [("purchase", 100), ("refund", -20), ("refund_reversal", 20)]
    # The credits came back as a purchase grant, like the one they were taken from.
    reversal = db.scalar(select(CreditTransaction).where(
        CreditTransaction.kind == "refund_reversal", CreditTransaction.user_id == user.id))
    grant = db.scalar(select(CreditGrant).where(CreditGrant.user_id == user.id)
                      .order_by(CreditGrant.id.desc()).limit(1))
    assert (grant.source, grant.amount, reversal.dedupe_key) == (
        "purchase", 20, f"refund_reversal:{refund['id']}")

    # A late update of the failed refund changes nothing; a genuine full refund later still
    # takes back exactly what the payment granted.
    _send(client, db, se.event("refund.updated", refund), expect="ignored")
    _send(client, db, se.event("charge.refunded", se.charge(payment, amount_refunded=1500)))
    assert _state(db, user, payment) == (0, "refunded", 1500, 100)
    assert _ledger(db, user)[3:] == [("refund", -100)]


def test_a_refund_canceled_before_it_was_counted_never_takes_credits(
    client, db, celery_worker, stripe_client
):
    user, payment, refund = _paid_with_refund(client, db, stripe_client, 300)
    _send(client, db, _ended(refund, "canceled", "charge.refund.updated"))
    _send(client, db, se.event("refund.created", refund), se.event("refund.updated", refund),
          expect="ignored")
    # A stale charge snapshot that still counts it (its refunds listed) leaves it out too.
    stale = {**se.charge(payment, amount_refunded=300),
             "refunds": {"object": "list", "data": [refund], "has_more": False}}
    _send(client, db, se.event("charge.refunded", stale))
    assert _state(db, user, payment) == (100, "succeeded", 0, 0)
    assert _ledger(db, user) == [("purchase", 100)]
    row = db.get(StripeRefund, refund["id"])
    assert (row.status, row.counted, row.amount_cents) == ("canceled", False, 300)
