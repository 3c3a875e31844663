"""Plan changes against localstripe (through the stub): an upgrade now with Stripe's proration
and its credits, a downgrade at the period's end, each recorded; the confirming events
delivered in both orders, and an older state delivered last, never move the plan back."""

from __future__ import annotations

import copy
import time

import pytest
from sqlalchemy import select

from db.models import CreditTransaction, Payment, PlanChange, StripeEvent, Subscription
from tests import stripe_events as se
from tests.factories import auth_headers, make_user
from tests.support import wait_for

API = "/api/user-management"


def _send(client, db, *events) -> None:
    for evt in events:
        assert se.deliver(client, evt).status_code == 200

    def done() -> bool:
        db.expire_all()
        return all(db.get(StripeEvent, e["id"]).status != "pending" for e in events)

    wait_for(done, timeout=30, message="events processed")


@pytest.fixture
def plans(client, db) -> dict[str, str]:
    admin = make_user(db, role="admin")
    ids = {}
    for slug, credits, price in (("basic", 100, 2000), ("team", 1000, 5000)):
        made = client.post(f"{API}/admin/plans", json={
            "slug": slug, "name": slug.title(), "monthly_credits": credits,
            "price_cents": price}, headers=auth_headers(admin))
        assert made.status_code == 201, made.text
        ids[slug] = made.json()["id"]
    return ids


def _subscribed(client, db, slug: str):
    user = make_user(db)
    started = client.post(f"{API}/subscription",
                          json={"plan_id": slug, "payment_method": "pm_card_visa"},
                          headers=auth_headers(user))
    assert started.status_code == 201, started.text
    db.expire_all()
    return user, started.json()["subscription"]["stripe_subscription_id"]


def _row(db, stripe_id: str) -> Subscription:
    db.expire_all()
    return db.scalars(select(Subscription)
                      .where(Subscription.stripe_subscription_id == stripe_id)).one()


def _credits(db, user) -> list[int]:
    db.expire_all()
    return list(db.scalars(select(CreditTransaction.amount)
                           .where(CreditTransaction.user_id == user.id)))


def _changes(db, user) -> list[tuple[str, str]]:
    db.expire_all()
    return [(c.direction, c.status) for c in db.scalars(
        select(PlanChange).where(PlanChange.user_id == user.id).order_by(PlanChange.created_at))]


def test_an_upgrade_is_immediate_and_its_proration_grants_the_difference_in_either_order(
    client, db, celery_worker, plans, stripe_client
):
    for subscription_first in (True, False):
        user, stripe_id = _subscribed(client, db, "basic")
        before = int(time.time()) - 5  # the subscription's first state, older than the change
        created_state = copy.deepcopy(stripe_client.v1.subscriptions.retrieve(stripe_id)
                                      .to_dict(for_json=True))

        changed = client.post(f"{API}/subscription/change", json={"plan_id": "team"},
                              headers=auth_headers(user))
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert body["plan"]["slug"] == "team"
        assert body["change"]["direction"] == "upgrade" and body["change"]["status"] == "applied"
        assert (body["change"]["from_plan_id"], body["change"]["to_plan_id"]) == (
            plans["basic"], plans["team"])
        assert str(_row(db, stripe_id).plan_id) == plans["team"]

        # What Stripe did: the item on Team, a proration invoice paid at once.
        remote = stripe_client.v1.subscriptions.retrieve(stripe_id).to_dict(for_json=True)
        assert remote["items"]["data"][0]["plan"]["id"] != created_state["items"]["data"][0][
            "plan"]["id"]
        invoice = stripe_client.v1.invoices.retrieve(remote["latest_invoice"]).to_dict(
            for_json=True)
        amounts = sorted(line["amount"] for line in invoice["lines"]["data"])
        assert amounts == [-2000, 5000] and invoice["status"] == "paid"  # whole period left

        updated = se.event("customer.subscription.updated", remote)
        paid = se.event("invoice.payment_succeeded", invoice)
        stale = se.event("customer.subscription.created", created_state, created=before)
        order = (updated, paid) if subscription_first else (paid, updated)
        _send(client, db, *order)
        _send(client, db, stale)  # an older state, naming Basic, delivered last
        _send(client, db, paid)  # and the invoice again

        assert str(_row(db, stripe_id).plan_id) == plans["team"]
        # Team's 1000 less Basic's 100, the whole period left: 900, once.
        assert _credits(db, user) == [900]
        payment = db.scalars(select(Payment).where(Payment.user_id == user.id)).one()
        assert (payment.amount_cents, payment.credits) == (3000, 900)
        assert _changes(db, user) == [("upgrade", "applied")]


def test_a_downgrade_waits_for_the_renewal_in_either_order(
    client, db, celery_worker, plans, stripe_client
):
    for subscription_first in (True, False):
        user, stripe_id = _subscribed(client, db, "team")
        row = _row(db, stripe_id)
        period_end = int(row.current_period_end.timestamp())
        db.refresh(user)
        invoices_before = len(stripe_client.v1.invoices.list(
            params={"customer": user.stripe_customer_id}).data)

        changed = client.post(f"{API}/subscription/change", json={"plan_id": "basic"},
                              headers=auth_headers(user))
        assert changed.status_code == 200, changed.text
        body = changed.json()
        assert body["change"]["direction"] == "downgrade"
        assert body["change"]["status"] == "scheduled"
        assert body["plan"]["slug"] == "team"  # until the period ends
        state = client.get(f"{API}/subscription", headers=auth_headers(user)).json()
        assert state["plan"]["slug"] == "team"
        assert state["pending_change"]["to_plan_id"] == plans["basic"]

        remote = stripe_client.v1.subscriptions.retrieve(stripe_id).to_dict(for_json=True)
        customer = remote["customer"]
        assert len(stripe_client.v1.invoices.list(params={"customer": customer}).data) == (
            invoices_before)  # nothing charged now
        # Stripe's state right away names Basic: the plan in effect stays Team.
        _send(client, db, se.event("customer.subscription.updated", remote))
        assert str(_row(db, stripe_id).plan_id) == plans["team"]

        basic_stripe = remote["items"]["data"][0]["plan"]["id"]
        renewed = copy.deepcopy(remote)
        renewed.update(current_period_start=period_end, current_period_end=period_end + 2_592_000)
        for item in renewed["items"]["data"]:
            item.update(current_period_start=period_end,
                        current_period_end=period_end + 2_592_000)
        renewal_state = se.event("customer.subscription.updated", renewed,
                                 created=int(time.time()) + 2)
        renewal_invoice = se.invoice(se.new_id("in"), sub_id=stripe_id, customer=customer,
                                     stripe_plan_id=basic_stripe, amount_paid=2000)
        renewal_invoice["billing_reason"] = "subscription_cycle"
        paid = se.event("invoice.paid", renewal_invoice)
        _send(client, db, *((renewal_state, paid) if subscription_first
                            else (paid, renewal_state)))
        # Team's state from before the change, delivered late, does not bring Team back.
        stale = copy.deepcopy(remote)
        stale["items"]["data"][0]["plan"]["id"] = _row_plan_stripe(db, plans["team"])
        _send(client, db, se.event("customer.subscription.updated", stale,
                                   created=int(time.time()) - 60))

        assert str(_row(db, stripe_id).plan_id) == plans["basic"]
        assert _changes(db, user) == [("downgrade", "applied")]
        assert _credits(db, user) == [100]  # the renewal on Basic
        assert client.get(f"{API}/subscription",
                          headers=auth_headers(user)).json()["pending_change"] is None


def _row_plan_stripe(db, plan_id: str) -> str:
    from db.models import Plan

    db.expire_all()
    plan = db.get(Plan, plan_id)
    assert plan is not None and plan.stripe_plan_id
    return plan.stripe_plan_id


def test_bad_plan_changes_change_nothing(client, db, plans):
    nobody = make_user(db)
    none = client.post(f"{API}/subscription/change", json={"plan_id": "team"},
                       headers=auth_headers(nobody))
    assert none.status_code == 404 and none.json()["error"]["code"] == "no_subscription"
    user, stripe_id = _subscribed(client, db, "basic")
    for body, status, code in (
        ({"plan_id": "basic"}, 409, "plan_unchanged"),
        ({"plan_id": "gold"}, 404, "plan_not_found"),
    ):
        answer = client.post(f"{API}/subscription/change", json=body,
                             headers=auth_headers(user))
        assert answer.status_code == status and answer.json()["error"]["code"] == code
    unknown = client.post(f"{API}/subscription/change", json={"plan_id": "team", "x": 1},
                          headers=auth_headers(user))
    assert unknown.status_code == 422
    assert _changes(db, user) == [] and str(_row(db, stripe_id).plan_id) == plans["basic"]


def test_the_current_plan_calls_off_a_waiting_downgrade(client, db, plans, stripe_client):
    user, stripe_id = _subscribed(client, db, "team")
    assert client.post(f"{API}/subscription/change", json={"plan_id": "basic"},
                       headers=auth_headers(user)).status_code == 200
    back = client.post(f"{API}/subscription/change", json={"plan_id": "team"},
                       headers=auth_headers(user))
    assert back.status_code == 200 and back.json()["change"] is None
    assert _changes(db, user) == [("downgrade", "superseded")]
    remote = stripe_client.v1.subscriptions.retrieve(stripe_id).to_dict(for_json=True)
    assert remote["items"]["data"][0]["plan"]["id"] == _row_plan_stripe(db, plans["team"])
