"""A success event settles only the payment it is really about, and only with its amount.

Issue 13, finding 4: the metadata of an event is Stripe's copy of what we wrote, but an
event about one PaymentIntent that names another payment, or a success without an amount or
a currency, is parked for an operator instead of granting anything.
"""

from __future__ import annotations

import pytest

from db.models import CreditTransaction, Payment, StripeEvent, User
from tests import stripe_events as se
from tests.factories import make_payment, make_user
from tests.support import wait_for


def _processed(db, evt) -> StripeEvent:
    def done() -> StripeEvent | None:
        db.expire_all()
        row = db.get(StripeEvent, evt["id"])
        return row if row is not None and row.status != "pending" else None

    return wait_for(done, timeout=30, message=f"event {evt['id']} processed")


def _parked_and_nothing_granted(db, evt, *payments: Payment) -> None:
    row = _processed(db, evt)
    assert (row.status, row.last_error.split(":")[0]) == ("failed", "Rejected"), row.last_error
    for payment in payments:
        db.refresh(payment)
        assert payment.status == "pending"
    assert db.query(CreditTransaction).count() == 0


@pytest.mark.parametrize("missing", ["amount", "currency"])
def test_a_success_without_an_amount_or_currency_is_parked_not_granted(
    client, db, celery_worker, missing
):
    payment = make_payment(db, make_user(db))
    intent = se.payment_intent(payment)
    if missing == "amount":
        intent.pop("amount"), intent.pop("amount_received")
    else:
        intent.pop("currency")
    evt = se.event("payment_intent.succeeded", intent)

    assert se.deliver(client, evt).status_code == 200

    _parked_and_nothing_granted(db, evt, payment)


def test_an_event_naming_another_users_payment_in_its_metadata_settles_neither(
    client, db, celery_worker
):
    alice, bob = make_user(db), make_user(db)
    alices, bobs = make_payment(db, alice), make_payment(db, bob)
    intent = se.payment_intent(alices)
    intent["metadata"]["payment_id"] = str(bobs.id)  # Alice's PaymentIntent, Bob's payment
    evt = se.event("payment_intent.succeeded", intent)

    assert se.deliver(client, evt).status_code == 200

    _parked_and_nothing_granted(db, evt, alices, bobs)
    db.expire_all()
    assert db.get(Payment, bobs.id).stripe_payment_intent_id != alices.stripe_payment_intent_id


def test_an_event_of_another_stripe_customer_settles_nothing(client, db, celery_worker):
    bob = make_user(db, stripe_customer_id=se.new_id("cus"))
    checkout = make_payment(db, bob, flow="checkout")
    session = se.checkout_session(checkout)
    session["customer"] = se.new_id("cus")  # someone else's checkout carrying Bob's ids
    evt = se.event("checkout.session.completed", session)

    assert se.deliver(client, evt).status_code == 200

    _parked_and_nothing_granted(db, evt, checkout)
    db.expire_all()
    assert db.get(User, bob.id).credit_balance == 0
