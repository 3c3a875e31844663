"""Credits follow money: each subscription invoice grants what it paid for.

Issue 13, finding 3 (the rule issue 19 asks for), case by case with signed Stripe-shaped
``invoice.paid`` events through the webhook and a real worker.
"""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select

from db.models import CreditTransaction, Payment, StripeEvent
from tests import stripe_events as se
from tests.factories import make_plan, make_user
from tests.support import wait_for


def _processed(client, db, evt) -> StripeEvent:
    assert se.deliver(client, evt).status_code == 200

    def done() -> StripeEvent | None:
        db.expire_all()
        row = db.get(StripeEvent, evt["id"])
        return row if row is not None and row.status != "pending" else None

    return wait_for(done, timeout=30, message="invoice event processed")


def _invoice(user, plan, *, amount_paid: int, reason: str, lines=None, currency: str = "usd",
             **fields) -> dict:
    obj = se.invoice(se.new_id("in"), sub_id=se.new_id("sub"), customer=user.stripe_customer_id,
                     stripe_plan_id=plan.stripe_plan_id, amount_paid=amount_paid)
    template = obj["lines"]["data"][0]
    if lines is not None:  # (plan, amount) per line
        obj["lines"]["data"] = []
        for line_plan, amount in lines:
            line = copy.deepcopy(template)
            line.update(id=se.new_id("il"), amount=amount)
            line["pricing"]["price_details"]["price"] = line_plan.stripe_plan_id
            obj["lines"]["data"].append(line)
    obj.update(billing_reason=reason, currency=currency, **fields)
    return se.event("invoice.paid", obj)


def _granted(db, user) -> list[int]:
    db.expire_all()
    return list(db.scalars(select(CreditTransaction.amount)
                           .where(CreditTransaction.user_id == user.id)))


def _payments(db, user) -> list[tuple[int, int]]:
    db.expire_all()
    return [tuple(r) for r in db.execute(
        select(Payment.amount_cents, Payment.credits).where(Payment.user_id == user.id))]


@pytest.fixture
def subscriber(db):
    return make_user(db, stripe_customer_id=se.new_id("cus"))


@pytest.fixture
def team(db):
    return make_plan(db, monthly_credits=1000, price_cents=5000)


def test_a_full_renewal_grants_the_plans_credits(client, db, celery_worker, subscriber, team):
    evt = _invoice(subscriber, team, amount_paid=5000, reason="subscription_cycle")
    assert _processed(client, db, evt).status == "processed"
    assert _granted(db, subscriber) == [1000]
    assert _payments(db, subscriber) == [(5000, 1000)]


def test_a_zero_invoice_of_a_plan_update_grants_nothing(client, db, celery_worker, subscriber,
                                                        team):
    """The review's reproduction: amount_paid 0, billing_reason subscription_update."""
    evt = _invoice(subscriber, team, amount_paid=0, reason="subscription_update")
    assert _processed(client, db, evt).status == "ignored"
    assert _granted(db, subscriber) == [] and _payments(db, subscriber) == []


def test_a_discounted_invoice_grants_the_share_it_paid(client, db, celery_worker, subscriber,
                                                       team):
    evt = _invoice(subscriber, team, amount_paid=2500, reason="subscription_cycle")  # 50% off
    assert _processed(client, db, evt).status == "processed"
    assert _granted(db, subscriber) == [500]
    assert _payments(db, subscriber) == [(2500, 500)]


def test_tax_paid_on_top_buys_no_extra_credits(client, db, celery_worker, subscriber, team):
    evt = _invoice(subscriber, team, amount_paid=6000, reason="subscription_cycle",
                   total_taxes=[{"amount": 1000, "tax_behavior": "exclusive"}])
    assert _processed(client, db, evt).status == "processed"
    assert _granted(db, subscriber) == [1000]


def test_an_upgrades_proration_grants_the_difference_in_proportion_to_the_amount(
    client, db, celery_worker, subscriber, team
):
    basic = make_plan(db, monthly_credits=300, price_cents=2000)
    # Half the period left: unused half of Basic credited, half of Team charged.
    evt = _invoice(subscriber, team, amount_paid=1500, reason="subscription_update",
                   lines=[(basic, -1000), (team, 2500)])
    assert _processed(client, db, evt).status == "processed"
    assert _granted(db, subscriber) == [(1000 - 300) // 2]
    payment = db.scalars(select(Payment).where(Payment.user_id == subscriber.id)).one()
    assert (payment.plan_id, payment.amount_cents, payment.credits) == (team.id, 1500, 350)


def test_a_zero_invoice_starting_a_trial_grants_the_plans_trial_credits_only(
    client, db, celery_worker, subscriber
):
    trial = make_plan(db, monthly_credits=1000, price_cents=5000)
    trial.trial_credits = 50
    db.commit()
    no_trial = make_plan(db, monthly_credits=1000, price_cents=5000)
    other = make_user(db, stripe_customer_id=se.new_id("cus"))

    started = _invoice(subscriber, trial, amount_paid=0, reason="subscription_create",
                       lines=[(trial, 0)])
    plain = _invoice(other, no_trial, amount_paid=0, reason="subscription_create",
                     lines=[(no_trial, 0)])

    assert _processed(client, db, started).status == "processed"
    assert _processed(client, db, plain).status == "ignored"
    assert _granted(db, subscriber) == [50] and _payments(db, subscriber) == []
    assert _granted(db, other) == []


def test_an_invoice_in_another_currency_than_its_plans_is_parked(client, db, celery_worker,
                                                                  subscriber, team):
    evt = _invoice(subscriber, team, amount_paid=5000, reason="subscription_cycle",
                   currency="eur")
    row = _processed(client, db, evt)
    assert row.status == "failed" and row.last_error.startswith("Rejected: ")
    assert _granted(db, subscriber) == [] and _payments(db, subscriber) == []


def test_a_downgrades_proration_credit_grants_nothing(client, db, celery_worker, subscriber,
                                                       team):
    """A proration to a cheaper plan nets below zero: Stripe pays nothing, nothing is granted
    (the cheaper plan's credits come with its first renewal)."""
    basic = make_plan(db, monthly_credits=300, price_cents=2000)
    evt = _invoice(subscriber, basic, amount_paid=0, reason="subscription_update",
                   lines=[(team, -2500), (basic, 1000)])
    assert _processed(client, db, evt).status == "ignored"
    assert _granted(db, subscriber) == [] and _payments(db, subscriber) == []
