"""Refunds and disputes take back (and give back) credits exactly once, in any order."""

from __future__ import annotations

from sqlalchemy import select

from db.models import CreditTransaction, Payment, StripeEvent, User
from tests import stripe_events as se
from tests.factories import auth_headers, make_payment, make_plan, make_user
from tests.support import wait_for


def _wait_done(db, *event_ids: str, timeout: float = 30) -> None:
    def done() -> bool:
        db.expire_all()
        rows = [db.get(StripeEvent, e) for e in event_ids]
        return all(r is not None and r.status != "pending" for r in rows)

    wait_for(done, timeout=timeout, message=f"events {event_ids} processed")


def _send(client, db, *events) -> None:
    for evt in events:
        assert se.deliver(client, evt).status_code == 200
    _wait_done(db, *(e["id"] for e in events))
    for evt in events:
        assert db.get(StripeEvent, evt["id"]).status == "processed", evt["type"]


def _ledger(db, user) -> list[tuple[str, int]]:
    db.expire_all()
    rows = db.execute(
        select(CreditTransaction.kind, CreditTransaction.amount)
        .where(CreditTransaction.user_id == user.id)
        .order_by(CreditTransaction.id)
    )
    return [tuple(r) for r in rows]


def _state(db, user, payment) -> tuple[int, str, int, int, str | None]:
    db.expire_all()
    p = db.get(Payment, payment.id)
    return (
        db.get(User, user.id).credit_balance, p.status, p.refunded_cents, p.credits_refunded,
        p.dispute_status,
    )


def _paid(client, db, user, **kw) -> Payment:
    payment = make_payment(db, user, **kw)
    _send(client, db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    return payment


def _refunded(payment: Payment, cents: int) -> dict:
    return se.event("charge.refunded", se.charge(payment, amount_refunded=cents))


def test_full_refund_takes_back_all_the_credits(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)  # starter: 100 credits for 1500
    _send(client, db, _refunded(payment, 1500))
    assert _state(db, user, payment) == (0, "refunded", 1500, 100, None)
    assert _ledger(db, user) == [("purchase", 100), ("refund", -100)]


def test_partial_refunds_are_proportional_and_add_up_to_at_most_the_credits(
    client, db, celery_worker
):
    user = make_user(db)
    payment = _paid(client, db, user)
    _send(client, db, _refunded(payment, 500))
    assert _state(db, user, payment) == (67, "partially_refunded", 500, 33, None)
    _send(client, db, _refunded(payment, 1000))
    assert _state(db, user, payment) == (34, "partially_refunded", 1000, 66, None)
    # An older total delivered late, then the rest: never more than the payment's credits.
    _send(client, db, _refunded(payment, 500), _refunded(payment, 1500), _refunded(payment, 1500))
    assert _state(db, user, payment) == (0, "refunded", 1500, 100, None)
    assert _ledger(db, user) == [("purchase", 100), ("refund", -33), ("refund", -33), ("refund", -34)]


def test_refund_of_spent_credits_leaves_a_debt_and_spending_is_refused(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)
    spent = client.post(
        "/api/user-management/credits/use", json={"credits": 80}, headers=auth_headers(user)
    )
    assert spent.status_code == 200, spent.text
    _send(client, db, _refunded(payment, 1500))
    assert _state(db, user, payment)[0] == -80

    refused = client.post(
        "/api/user-management/credits/use", json={"credits": 1}, headers=auth_headers(user)
    )
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_credits"
    assert _state(db, user, payment)[0] == -80


def test_refund_arriving_before_the_payment_succeeded_ends_in_the_right_state(
    client, db, celery_worker
):
    user = make_user(db)
    payment = make_payment(db, user)
    _send(client, db, _refunded(payment, 500))
    assert _state(db, user, payment) == (0, "pending", 500, 0, None)  # nothing granted yet

    _send(client, db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    assert _state(db, user, payment) == (67, "partially_refunded", 500, 33, None)
    assert _ledger(db, user) == [("purchase", 100), ("refund", -33)]


def test_refund_events_read_the_running_total_of_the_charge_from_stripe(
    client, db, celery_worker, stripe_client
):
    user = make_user(db)
    payment = make_payment(db, user, stripe_client=stripe_client, payment_method="pm_card_visa")
    _send(client, db, se.event("payment_intent.succeeded", se.payment_intent(payment)))
    refunds = [
        stripe_client.v1.refunds.create(
            params={"payment_intent": payment.stripe_payment_intent_id, "amount": cents}
        ).to_dict(for_json=True)
        for cents in (300, 450)
    ]
    # Delivered newest first and twice: the charge's running total decides.
    events = [se.event("refund.created", refund) for refund in reversed(refunds)]
    _send(client, db, *events, *events)
    assert _state(db, user, payment) == (50, "partially_refunded", 750, 50, None)


def test_dispute_won_claws_back_then_reinstates_once(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)
    opened = se.event("charge.dispute.created", se.dispute(payment, dispute_id="dp_w", status="needs_response"))
    _send(client, db, opened, opened)
    assert _state(db, user, payment) == (0, "succeeded", 0, 0, "open")

    won = se.event("charge.dispute.closed", se.dispute(payment, dispute_id="dp_w", status="won"))
    _send(client, db, won, se.event("charge.dispute.closed", se.dispute(payment, dispute_id="dp_w", status="won")))
    assert _state(db, user, payment) == (100, "succeeded", 0, 0, "won")
    assert _ledger(db, user) == [("purchase", 100), ("dispute", -100), ("dispute_reversal", 100)]


def test_dispute_lost_keeps_the_credits_taken(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)
    _send(
        client, db,
        se.event("charge.dispute.created", se.dispute(payment, dispute_id="dp_l", status="needs_response")),
    )
    _send(client, db, se.event("charge.dispute.closed", se.dispute(payment, dispute_id="dp_l", status="lost")))
    assert _state(db, user, payment) == (0, "succeeded", 0, 0, "lost")
    assert _ledger(db, user) == [("purchase", 100), ("dispute", -100)]


def test_dispute_closure_arriving_before_its_creation(client, db, celery_worker):
    user = make_user(db)
    won_first = _paid(client, db, user)
    lost_first = _paid(client, db, user, package_id="pro")
    _send(
        client, db,
        se.event("charge.dispute.closed", se.dispute(won_first, dispute_id="dp_a", status="won")),
        se.event("charge.dispute.closed", se.dispute(lost_first, dispute_id="dp_b", status="lost")),
    )
    _send(
        client, db,
        se.event("charge.dispute.created", se.dispute(won_first, dispute_id="dp_a", status="needs_response")),
        se.event("charge.dispute.created", se.dispute(lost_first, dispute_id="dp_b", status="needs_response")),
    )
    assert _state(db, user, won_first)[4] == "won"
    assert _state(db, user, lost_first)[4] == "lost"
    # The won dispute never took anything; the lost one took the pro credits once.
    assert sorted(_ledger(db, user)) == sorted([("purchase", 100), ("purchase", 500), ("dispute", -500)])
    assert _state(db, user, won_first)[0] == 100


def test_partial_dispute_takes_back_its_share(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)
    _send(
        client, db,
        se.event("charge.dispute.created", se.dispute(payment, dispute_id="dp_p", status="needs_response", amount=750)),
    )
    assert _ledger(db, user) == [("purchase", 100), ("dispute", -50)]


def _dispute(payment: Payment, kind: str, dispute_id: str, status: str, **kw) -> dict:
    return se.event(kind, se.dispute(payment, dispute_id=dispute_id, status=status, **kw))


def test_refunds_and_disputes_together_never_take_back_more_than_the_payment(
    client, db, celery_worker
):
    """Half refunded and wholly disputed: 100 credits taken back in either order, not 150."""
    user = make_user(db)
    refund_first, dispute_first = _paid(client, db, user), _paid(client, db, user)
    _send(client, db, _refunded(refund_first, 750))
    _send(client, db, _dispute(refund_first, "charge.dispute.created", "dp_r1", "needs_response"))
    _send(client, db, _dispute(dispute_first, "charge.dispute.created", "dp_d1", "needs_response"))
    _send(client, db, _refunded(dispute_first, 750))
    assert _state(db, user, refund_first)[0] == 0  # one balance: both payments taken back whole
    taken = {
        p.id: -sum(amount for kind, amount in _ledger_of(db, p) if kind != "purchase")
        for p in (refund_first, dispute_first)
    }
    assert taken == {refund_first.id: 100, dispute_first.id: 100}

    # Both disputes won: each gives back what it took, and the refund keeps its half.
    _send(client, db, _dispute(refund_first, "charge.dispute.closed", "dp_r1", "won"))
    _send(client, db, _dispute(dispute_first, "charge.dispute.closed", "dp_d1", "won"))
    assert _state(db, user, refund_first) == (100, "partially_refunded", 750, 50, "won")
    assert _state(db, user, dispute_first) == (100, "partially_refunded", 750, 50, "won")
    assert _ledger_of(db, dispute_first) == [
        ("purchase", 100), ("dispute", -100), ("dispute_reversal", 100), ("refund", -50)
    ]


def _ledger_of(db, payment: Payment) -> list[tuple[str, int]]:
    db.expire_all()
    rows = db.execute(
        select(CreditTransaction.kind, CreditTransaction.amount)
        .where(CreditTransaction.reference_type == "payment",
               CreditTransaction.reference_id == str(payment.id))
        .order_by(CreditTransaction.id)
    )
    return [tuple(r) for r in rows]


def test_an_inquiry_takes_nothing_unless_it_escalates(client, db, celery_worker):
    user = make_user(db)
    closed, escalated = _paid(client, db, user), _paid(client, db, user)
    inquiries = [
        _dispute(closed, "charge.dispute.created", "dp_i1", "warning_needs_response"),
        _dispute(escalated, "charge.dispute.created", "dp_i2", "warning_needs_response"),
    ]
    for evt in inquiries:
        assert se.deliver(client, evt).status_code == 200
    _wait_done(db, *(evt["id"] for evt in inquiries))
    assert {db.get(StripeEvent, evt["id"]).status for evt in inquiries} == {"ignored"}
    assert _state(db, user, closed) == (200, "succeeded", 0, 0, None)

    # One closes without a chargeback; a later chargeback of the same payment still counts.
    _send(client, db, _dispute(closed, "charge.dispute.closed", "dp_i1", "warning_closed"))
    assert _state(db, user, closed) == (200, "succeeded", 0, 0, None)
    _send(client, db, _dispute(closed, "charge.dispute.created", "dp_c1", "needs_response"))
    assert _state(db, user, closed) == (100, "succeeded", 0, 0, "open")

    # The other escalates to a chargeback (same dispute, updated): its credits are taken.
    _send(client, db, _dispute(escalated, "charge.dispute.updated", "dp_i2", "needs_response"))
    _send(client, db, _dispute(escalated, "charge.dispute.updated", "dp_i2", "under_review"))
    assert _state(db, user, escalated) == (0, "succeeded", 0, 0, "open")
    assert _ledger_of(db, escalated) == [("purchase", 100), ("dispute", -100)]


def test_a_chargeback_that_ends_prevented_gives_the_credits_back(client, db, celery_worker):
    user = make_user(db)
    payment = _paid(client, db, user)
    _send(client, db, _dispute(payment, "charge.dispute.created", "dp_pv", "needs_response"))
    assert _state(db, user, payment)[0] == 0
    _send(client, db, _dispute(payment, "charge.dispute.closed", "dp_pv", "prevented"))
    _send(client, db, _dispute(payment, "charge.dispute.closed", "dp_pv", "prevented"))
    assert _state(db, user, payment)[0] == 100
    assert _ledger_of(db, payment) == [
        ("purchase", 100), ("dispute", -100), ("dispute_reversal", 100)
    ]


def test_refund_of_a_subscription_invoice_before_its_invoice_paid_is_applied(
    client, db, celery_worker
):
    """The invoice's payment row is written by invoice.paid: a refund that comes first waits."""
    plan = make_plan(db, monthly_credits=300, price_cents=2000)
    user = make_user(db, stripe_customer_id=se.new_id("cus"))
    sub_id, invoice_id, intent_id = se.new_id("sub"), se.new_id("in"), se.new_id("pi")
    invoice = se.invoice(invoice_id, sub_id=sub_id, customer=user.stripe_customer_id,
                         stripe_plan_id=plan.stripe_plan_id, amount_paid=2000)
    invoice["payment_intent"] = intent_id
    charge = se.stripe_object(
        "charge", id=se.new_id("ch"), amount=2000, amount_captured=2000, amount_refunded=2000,
        refunded=True, currency="usd", payment_intent=intent_id,
        customer=user.stripe_customer_id, metadata={},
    )
    refund = se.event("charge.refunded", charge)
    assert se.deliver(client, refund).status_code == 200
    _send(client, db, se.event("invoice.paid", invoice))
    _wait_done(db, refund["id"])
    assert db.get(StripeEvent, refund["id"]).status == "processed"
    assert db.get(User, user.id).credit_balance == 0
    assert [kind for kind, _ in _ledger(db, user)] == ["subscription_grant", "refund"]


def test_refund_of_a_strangers_charge_is_ignored(client, db, celery_worker):
    charge = se.stripe_object(
        "charge", id=se.new_id("ch"), amount=2000, amount_refunded=2000, currency="usd",
        payment_intent=se.new_id("pi"), customer=se.new_id("cus"), metadata={},
    )
    refund = se.event("charge.refunded", charge)
    assert se.deliver(client, refund).status_code == 200
    _wait_done(db, refund["id"])
    assert db.get(StripeEvent, refund["id"]).status == "ignored"
