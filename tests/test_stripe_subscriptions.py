"""Plans, subscriptions and their events: state in step, out of order, credits once per invoice."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select

from db.models import (
    AdminActivityLog,
    CreditTransaction,
    Payment,
    Plan,
    StripeEvent,
    Subscription,
    User,
)
from tests import stripe_events as se
from tests.factories import auth_headers, make_plan, make_user
from tests.stripe_events import localstripe_webhooks  # noqa: F401 - a fixture
from tests.support import wait_for

API = "/api/user-management"


def _send(client, db, *events) -> None:
    for evt in events:
        assert se.deliver(client, evt).status_code == 200

    def done() -> bool:
        db.expire_all()
        return all(db.get(StripeEvent, e["id"]).status != "pending" for e in events)

    wait_for(done, timeout=30, message="events processed")


def _sub(db, stripe_id: str) -> Subscription:
    db.expire_all()
    return db.scalars(select(Subscription).where(Subscription.stripe_subscription_id == stripe_id)).one()


def _user(db, user) -> User:
    db.expire_all()
    return db.get(User, user.id)


def _grants(db, user) -> list[tuple[str, int, str]]:
    db.expire_all()
    rows = db.execute(
        select(CreditTransaction.kind, CreditTransaction.amount, CreditTransaction.dedupe_key)
        .where(CreditTransaction.user_id == user.id)
        .order_by(CreditTransaction.id)
    )
    return [tuple(r) for r in rows]


# --- end to end with localstripe ----------------------------------------------------------


@pytest.mark.usefixtures("localstripe_webhooks")
def test_plan_subscription_grants_monthly_credits_and_deleting_it_ends_it(
    client, db, celery_worker, stripe_client
):
    admin = make_user(db, role="admin")
    created = client.post(
        f"{API}/admin/plans",
        json={"slug": "team", "name": "Team", "monthly_credits": 1000, "price_cents": 4900},
        headers=auth_headers(admin),
    )
    assert created.status_code == 201, created.text
    assert created.json()["stripe_plan_id"]  # made in Stripe for us

    user = make_user(db)
    started = client.post(
        f"{API}/subscription",
        json={"plan_id": "team", "payment_method": "pm_card_visa"},
        headers=auth_headers(user),
    )
    assert started.status_code == 201, started.text
    stripe_id = started.json()["subscription"]["stripe_subscription_id"]
    assert started.json()["subscription"]["status"] == "active"

    # localstripe's invoice.payment_succeeded, through the webhook and a real worker.
    wait_for(lambda: _user(db, user).credit_balance == 1000, timeout=30,
             message="the monthly credits of the first invoice")
    grant = _grants(db, user)
    assert len(grant) == 1 and grant[0][0] == "subscription_grant"
    assert grant[0][2].startswith("invoice:in_")
    invoice_payment = db.scalars(select(Payment).where(Payment.user_id == user.id)).one()
    assert (invoice_payment.flow, invoice_payment.status, invoice_payment.amount_cents) == (
        "subscription", "succeeded", 4900
    )
    assert _user(db, user).subscription_status == "active"
    assert _user(db, user).subscription_plan_id == _sub(db, stripe_id).plan_id

    stripe_client.v1.subscriptions.cancel(stripe_id)  # deleted in Stripe (say, the dashboard)
    wait_for(lambda: _sub(db, stripe_id).status == "canceled", timeout=30,
             message="customer.subscription.deleted applied")
    assert _user(db, user).subscription_status == "canceled"
    assert _user(db, user).subscription_plan_id is None
    body = client.get(f"{API}/subscription", headers=auth_headers(user)).json()
    assert body["subscription"]["status"] == "canceled"
    assert _user(db, user).credit_balance == 1000  # ending keeps what was paid for


def test_cancel_at_period_end_then_immediately(client, db, celery_worker, stripe_client):
    admin = make_user(db, role="admin")
    assert client.post(
        f"{API}/admin/plans",
        json={"slug": "solo", "name": "Solo", "monthly_credits": 100, "price_cents": 900},
        headers=auth_headers(admin),
    ).status_code == 201
    user = make_user(db)
    headers = auth_headers(user)
    assert client.post(
        f"{API}/subscription", json={"plan_id": "solo", "payment_method": "pm_card_visa"},
        headers=headers,
    ).status_code == 201
    again = client.post(
        f"{API}/subscription", json={"plan_id": "solo", "payment_method": "pm_card_visa"},
        headers=headers,
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "subscription_exists"

    later = client.post(f"{API}/subscription/cancel", json={}, headers=headers)
    assert later.status_code == 200, later.text
    assert later.json()["status"] == "active" and later.json()["cancel_at_period_end"] is True
    remote = stripe_client.v1.subscriptions.retrieve(later.json()["stripe_subscription_id"])
    assert remote.cancel_at_period_end is True

    now = client.post(f"{API}/subscription/cancel", json={"immediately": True}, headers=headers)
    assert now.status_code == 200 and now.json()["status"] == "canceled"
    assert _user(db, user).subscription_status == "canceled"
    none_left = client.post(f"{API}/subscription/cancel", json={}, headers=headers)
    assert none_left.status_code == 404 and none_left.json()["error"]["code"] == "no_subscription"


def test_subscribing_without_a_saved_card_starts_a_checkout_session(client, db, stripe_stub):
    plan = make_plan(db, slug="checkout-plan")
    user = make_user(db)
    started = client.post(f"{API}/subscription", json={"plan_id": str(plan.id)}, headers=auth_headers(user))
    assert started.status_code == 201, started.text
    body = started.json()
    assert body["subscription"] is None and body["checkout_url"].startswith("https://")
    sent = stripe_stub.session_params[body["session_id"]]
    assert sent["mode"] == "subscription"
    assert sent["line_items"][0]["price"] == plan.stripe_plan_id
    assert sent["subscription_data"]["metadata"] == {"user_id": str(user.id), "plan_id": str(plan.id)}
    assert db.scalar(select(Subscription.id)) is None  # the events will create it


def test_a_second_subscription_checkout_expires_the_first(client, db, stripe_stub):
    """A double click or a second tab: only the newest checkout can still be paid."""
    plan, other = make_plan(db), make_plan(db)
    user = make_user(db)
    headers = auth_headers(user)
    purchase = client.post(f"{API}/credits/purchase", json={"package_id": "starter",
                                                            "flow": "checkout"}, headers=headers)
    assert purchase.status_code == 201, purchase.text

    first = client.post(f"{API}/subscription", json={"plan_id": plan.slug}, headers=headers)
    second = client.post(f"{API}/subscription", json={"plan_id": other.slug}, headers=headers)

    assert (first.status_code, second.status_code) == (201, 201), second.text
    sessions = stripe_stub.sessions
    assert sessions[first.json()["session_id"]]["status"] == "expired"
    assert sessions[second.json()["session_id"]]["status"] == "open"
    assert sessions[purchase.json()["session_id"]]["status"] == "open"  # not a subscription

    # Paid between Stripe's list (which still says open) and the expiry: the user has just
    # subscribed, and the next start is refused.
    paid = second.json()["session_id"]
    sessions["listed-before-payment"] = dict(sessions[paid])  # the list's copy: open
    sessions[paid]["status"] = "complete"
    third = client.post(f"{API}/subscription", json={"plan_id": plan.slug}, headers=headers)
    assert third.status_code == 409, third.text
    assert third.json()["error"]["code"] == "subscription_exists"


def _stripe_customers_of(stripe_client, user) -> list[str]:
    listed = stripe_client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
    return [c.id for c in listed if c.to_dict().get("metadata", {}).get("user_id") == str(user.id)]


def _race(live_api: str, n: int, send) -> list:
    barrier = threading.Barrier(n)

    def one(_: int):
        with httpx.Client(base_url=live_api, timeout=60) as http:
            http.get("/healthz")  # connected before the race starts
            barrier.wait()
            return send(http)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_first_subscriptions_of_a_user_make_one_stripe_customer(
    live_api, db, stripe_client, stripe_stub
):
    """Two tabs starting a first subscription at once: one Stripe customer, and the newest
    checkout the only payable one."""
    plan = make_plan(db)
    user = make_user(db)
    headers = auth_headers(user)
    responses = _race(live_api, 4, lambda http: http.post(
        f"{API}/subscription", json={"plan_id": plan.slug}, headers=headers))
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    customers = _stripe_customers_of(stripe_client, user)
    assert len(customers) == 1, customers
    assert _user(db, user).stripe_customer_id == customers[0]
    opened = [stripe_stub.sessions[r.json()["session_id"]] for r in responses]
    assert {s["customer"] for s in opened} == {customers[0]}
    assert sorted(s["status"] for s in opened) == ["expired"] * 3 + ["open"]


def test_concurrent_first_purchases_of_a_user_make_one_stripe_customer(
    live_api, db, stripe_client
):
    """No lock orders two purchases: the customer's idempotency key does."""
    user = make_user(db)
    headers = auth_headers(user)
    responses = _race(live_api, 4, lambda http: http.post(
        f"{API}/credits/purchase", json={"package_id": "starter", "flow": "payment_intent"},
        headers=headers))
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    customers = _stripe_customers_of(stripe_client, user)
    assert len(customers) == 1, customers
    assert _user(db, user).stripe_customer_id == customers[0]


def test_bad_subscription_requests_change_nothing(client, db):
    plan = make_plan(db, slug="retired")
    live = make_plan(db)
    user = make_user(db)
    headers = auth_headers(user)
    client.patch(f"{API}/admin/plans/retired", json={"active": False},
                 headers=auth_headers(make_user(db, role="admin")))
    cases = [
        ({"plan_id": "nope"}, 404, "plan_not_found"),
        ({"plan_id": "retired"}, 400, "plan_inactive"),
        ({"plan_id": "retired", "payment_method": "card_123"}, 422, "validation_error"),
        # Stripe answers that it has no such payment method: the client's mistake, not ours.
        ({"plan_id": live.slug, "payment_method": "pm_doesnotexist"}, 400,
         "invalid_payment_method"),
        ({"plan_id": "retired", "extra": 1}, 422, "validation_error"),
        ({}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = client.post(f"{API}/subscription", json=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), body
    assert client.post(f"{API}/subscription", json={"plan_id": "x"}).status_code == 401
    assert db.scalar(select(Subscription.id)) is None
    assert _user(db, user).stripe_customer_id is None
    assert plan.id is not None


# --- events out of order (signed, built here) ---------------------------------------------


def _subscriber(db):
    plan = make_plan(db, monthly_credits=300)
    user = make_user(db, stripe_customer_id=se.new_id("cus"))
    return user, plan


def test_update_before_create_and_delete_before_update_end_in_the_newest_state(
    client, db, celery_worker
):
    user, plan = _subscriber(db)
    sub_id, t = se.new_id("sub"), int(time.time())
    meta = {"user_id": str(user.id), "plan_id": str(plan.id)}

    def sub_event(kind: str, created: int, status: str, **kw):
        obj = se.subscription(sub_id, customer=user.stripe_customer_id,
                              stripe_plan_id=plan.stripe_plan_id, status=status, metadata=meta, **kw)
        return se.event(f"customer.subscription.{kind}", obj, created=created)

    created = sub_event("created", t, "incomplete")
    updated = sub_event("updated", t + 10, "active", cancel_at_period_end=True)
    _send(client, db, updated)
    _send(client, db, created)  # older: must not win
    row = _sub(db, sub_id)
    assert (row.status, row.cancel_at_period_end, row.stripe_event_created) == ("active", True, t + 10)
    assert _user(db, user).subscription_status == "active"

    deleted = sub_event("deleted", t + 20, "canceled", canceled_at=t + 20)
    later_update = sub_event("updated", t + 15, "past_due")
    _send(client, db, deleted)
    _send(client, db, later_update)
    row = _sub(db, sub_id)
    assert row.status == "canceled" and row.stripe_event_created == t + 20
    assert _user(db, user).subscription_status == "canceled"


def test_canceled_is_final_even_against_a_newer_live_state(client, db, celery_worker):
    user, plan = _subscriber(db)
    sub_id, t = se.new_id("sub"), int(time.time())
    obj = se.subscription(sub_id, customer=user.stripe_customer_id, stripe_plan_id=plan.stripe_plan_id,
                          status="canceled")
    _send(client, db, se.event("customer.subscription.deleted", obj, created=t))
    live = se.subscription(sub_id, customer=user.stripe_customer_id, stripe_plan_id=plan.stripe_plan_id,
                           status="active")
    _send(client, db, se.event("customer.subscription.updated", live, created=t + 5))
    assert _sub(db, sub_id).status == "canceled"


def test_each_paid_invoice_grants_once_even_before_the_subscription_is_known(
    client, db, celery_worker
):
    user, plan = _subscriber(db)
    sub_id = se.new_id("sub")
    first, second = se.new_id("in"), se.new_id("in")

    def paid(invoice_id: str, kind: str = "invoice.paid"):
        obj = se.invoice(invoice_id, sub_id=sub_id, customer=user.stripe_customer_id,
                         stripe_plan_id=plan.stripe_plan_id, amount_paid=2000)
        return se.event(kind, obj)

    # No subscription row yet: the customer and the invoice line tell whose and which plan.
    _send(client, db, paid(first), paid(first, "invoice.payment_succeeded"), paid(first))
    _send(client, db, paid(second, "invoice.payment_succeeded"), paid(second))
    assert _grants(db, user) == [
        ("subscription_grant", 300, f"invoice:{first}"),
        ("subscription_grant", 300, f"invoice:{second}"),
    ]
    assert _user(db, user).credit_balance == 600


def test_failed_renewal_makes_the_subscription_past_due_until_a_newer_state(
    client, db, celery_worker
):
    user, plan = _subscriber(db)
    sub_id, t = se.new_id("sub"), int(time.time())
    active = se.subscription(sub_id, customer=user.stripe_customer_id, stripe_plan_id=plan.stripe_plan_id,
                             status="active")
    _send(client, db, se.event("customer.subscription.created", active, created=t))
    failed = se.invoice(se.new_id("in"), sub_id=sub_id, customer=user.stripe_customer_id,
                        stripe_plan_id=plan.stripe_plan_id, amount_paid=2000, status="open")
    _send(client, db, se.event("invoice.payment_failed", failed, created=t + 5))
    assert _sub(db, sub_id).status == "past_due"
    assert _user(db, user).subscription_status == "past_due"
    assert _grants(db, user) == []

    _send(client, db, se.event("customer.subscription.updated", active, created=t + 9))
    assert _sub(db, sub_id).status == "active"


def test_subscription_of_a_stranger_is_ignored(client, db, celery_worker):
    plan = make_plan(db)
    obj = se.subscription(se.new_id("sub"), customer="cus_stranger", stripe_plan_id=plan.stripe_plan_id,
                          status="active")
    evt = se.event("customer.subscription.created", obj)
    _send(client, db, evt)
    assert db.get(StripeEvent, evt["id"]).status == "ignored"
    assert db.scalar(select(Subscription.id)) is None


# --- plans --------------------------------------------------------------------------------


def test_plans_are_managed_by_admins_and_listed_publicly(client, db):
    admin = make_user(db, role="admin")
    headers = auth_headers(admin)
    created = client.post(
        f"{API}/admin/plans",
        json={"slug": "basic", "name": "Basic", "monthly_credits": 200, "price_cents": 1000,
              "stripe_price_id": "price_basic"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["stripe_price_id"] == "price_basic" and created.json()["active"] is True
    duplicate = client.post(
        f"{API}/admin/plans",
        json={"slug": "basic", "name": "B", "monthly_credits": 1, "price_cents": 1},
        headers=headers,
    )
    assert duplicate.status_code == 409

    public = client.get(f"{API}/plans").json()
    assert [p["slug"] for p in public] == ["basic"] and "stripe_price_id" not in public[0]

    changed = client.patch(f"{API}/admin/plans/basic", json={"monthly_credits": 250}, headers=headers)
    assert changed.status_code == 200 and changed.json()["monthly_credits"] == 250
    assert client.delete(f"{API}/admin/plans/basic", headers=headers).json()["active"] is False
    assert client.get(f"{API}/plans").json() == []
    assert [p["slug"] for p in client.get(f"{API}/admin/plans", headers=headers).json()] == ["basic"]

    actions = db.scalars(select(AdminActivityLog.action).order_by(AdminActivityLog.id)).all()
    assert actions == ["plan.create", "plan.update", "plan.update"]

    user_headers = auth_headers(make_user(db))
    assert client.get(f"{API}/admin/plans", headers=user_headers).status_code == 403
    assert client.post(
        f"{API}/admin/plans",
        json={"slug": "x1", "name": "X", "monthly_credits": 1, "price_cents": 1},
        headers=user_headers,
    ).status_code == 403
    bad = client.post(
        f"{API}/admin/plans",
        json={"slug": "Bad Slug", "name": "X", "monthly_credits": 0, "price_cents": -1},
        headers=headers,
    )
    assert bad.status_code == 422
    assert db.scalar(select(Plan.slug).where(Plan.slug == "x1")) is None


def test_same_second_creation_processed_after_activation_does_not_go_back(
    client, db, celery_worker
):
    """Stripe stamps created (incomplete) and the first payment's updated (active) alike."""
    user, plan = _subscriber(db)
    sub_id, stamp = se.new_id("sub"), int(time.time())
    meta = {"user_id": str(user.id), "plan_id": str(plan.id)}

    def state(kind: str, status: str) -> dict:
        obj = se.subscription(sub_id, customer=user.stripe_customer_id,
                              stripe_plan_id=plan.stripe_plan_id, status=status, metadata=meta)
        return se.event(f"customer.subscription.{kind}", obj, created=stamp)

    _send(client, db, state("updated", "active"))
    _send(client, db, state("created", "incomplete"))

    assert _sub(db, sub_id).status == "active"
    assert _user(db, user).subscription_status == "active"
    again = client.post(f"{API}/subscription", json={"plan_id": plan.slug},
                        headers=auth_headers(user))
    assert again.status_code == 409 and again.json()["error"]["code"] == "subscription_exists"


@pytest.mark.parametrize("upgrade_first", [False, True], ids=["invoice first", "upgrade first"])
def test_an_invoice_grants_the_plan_its_lines_bill_in_any_order(
    client, db, celery_worker, upgrade_first
):
    user, basic = _subscriber(db)
    pro = make_plan(db, monthly_credits=1000, price_cents=5000)
    sub_id, stamp = se.new_id("sub"), int(time.time())
    meta = {"user_id": str(user.id), "plan_id": str(basic.id)}

    def on(plan, kind: str, created: int) -> dict:
        obj = se.subscription(sub_id, customer=user.stripe_customer_id,
                              stripe_plan_id=plan.stripe_plan_id, status="active", metadata=meta)
        return se.event(f"customer.subscription.{kind}", obj, created=created)

    invoice_id = se.new_id("in")
    basic_invoice = se.event("invoice.paid", se.invoice(
        invoice_id, sub_id=sub_id, customer=user.stripe_customer_id,
        stripe_plan_id=basic.stripe_plan_id, amount_paid=2000), created=stamp + 1)
    order = [on(basic, "created", stamp), on(pro, "updated", stamp + 20), basic_invoice]
    if not upgrade_first:
        order = [basic_invoice, *order[:2]]
    for evt in order:
        _send(client, db, evt)

    assert _grants(db, user) == [("subscription_grant", 300, f"invoice:{invoice_id}")]
    assert _sub(db, sub_id).plan_id == pro.id
