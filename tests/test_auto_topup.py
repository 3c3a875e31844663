"""Saved cards, auto top-up and low-balance alerts against localstripe and a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from db import rls
from db.base import utc_now
from db.models import (
    AutoTopupSettings,
    CreditPackage,
    CreditTransaction,
    Payment,
    SavedPaymentMethod,
    TopupAttempt,
    User,
)
from db.transaction import transaction
from services import task_queue
from services.credits import ledger
from services.topup import attempts
from services.topup.charge import charge as charge_stripe
from tests import stripe_events as se
from tests.factories import auth_headers, make_user
from tests.smtp import body
from tests.stripe_events import localstripe_webhooks  # noqa: F401 - a fixture
from tests.support import wait_for
from tests.webhook_receiver import Receiver

API = "/api/user-management"
VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
NEEDS_AUTHENTICATION = "4000002500003155"


@pytest.fixture
def receiver(client, db) -> Iterator[tuple[Receiver, str]]:
    """A receiver subscribed to every event type, and its secret."""
    r = Receiver().start()
    admin = make_user(db, role="admin")
    created = client.post(f"{API}/admin/webhook-endpoints", json={"url": r.url, "events": ["*"]},
                          headers=auth_headers(admin))
    assert created.status_code == 201, created.text
    yield r, created.json()["secret"]
    r.stop()


def save_card(client, db, stripe_client, user: User, number: str) -> str:
    """Save a card as Stripe.js and Stripe do: the SetupIntent route, the card attached to
    the customer, then Stripe's signed ``payment_method.attached`` through our inbox."""
    setup = client.post(f"{API}/payment-methods/setup", headers=auth_headers(user))
    assert setup.status_code == 201, setup.text
    assert setup.json()["client_secret"].startswith("seti_")
    db.expire_all()
    customer = db.scalar(select(User.stripe_customer_id).where(User.id == user.id))
    pm = stripe_client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2030,
                                 "cvc": "123"}})
    stripe_client.v1.payment_methods.attach(pm.id, params={"customer": customer})
    obj = pm.to_dict()
    obj["customer"] = customer
    assert se.deliver(client, se.event("payment_method.attached", obj)).status_code == 200
    wait_for(lambda: [m for m in client.get(f"{API}/payment-methods", headers=auth_headers(
        user)).json()["items"] if m["id"] == pm.id], message="the saved card")
    return pm.id


def enable(client, user: User, *, threshold: int = 100, package_id: str = "starter",
           max_per_month: int = 10):
    return client.put(f"{API}/credits/auto-topup", headers=auth_headers(user), json={
        "enabled": True, "threshold": threshold, "package_id": package_id,
        "max_per_month": max_per_month})


def _post(settings, user_id: uuid.UUID, amount: int) -> None:
    """A committed balance change (a bonus, or usage when negative), through the ledger."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        ledger.post(session, user_id=user_id, amount=amount,
                    kind="bonus" if amount > 0 else "usage", reference_type="test")


def _attempts(db, user_id: uuid.UUID) -> list[TopupAttempt]:
    db.expire_all()
    return list(db.scalars(select(TopupAttempt).where(TopupAttempt.user_id == user_id)
                           .order_by(TopupAttempt.sequence)))


def _intents(stripe_client, customer: str | None) -> list:
    """The customer's PaymentIntents (localstripe lists them all: filtered here)."""
    listed = stripe_client.v1.payment_intents.list(params={"limit": 100}).data
    return [i for i in listed if i.customer == customer]


def _balance(db, user_id: uuid.UUID) -> int:
    db.expire_all()
    return db.scalar(select(User.credit_balance).where(User.id == user_id))


# --- settings and bad input ---------------------------------------------------------------


def test_auto_topup_settings_refuse_bad_input_and_change_nothing(client, db, stripe_client,
                                                                 celery_worker):
    user = make_user(db)
    headers = auth_headers(user)
    got = client.get(f"{API}/credits/auto-topup", headers=headers).json()
    assert got["enabled"] is False and got["threshold"] is None
    no_card = enable(client, user)
    assert no_card.status_code == 409 and no_card.json()["error"]["code"] == "no_payment_method"
    save_card(client, db, stripe_client, user, VISA)
    above = enable(client, user, threshold=101)  # starter gives 100 credits
    assert above.status_code == 400
    assert above.json()["error"]["code"] == "threshold_above_package"
    assert enable(client, user, max_per_month=0).status_code == 422
    assert enable(client, user, package_id="nope").status_code == 404
    db.get(CreditPackage, "pro").active = False
    db.commit()
    retired = enable(client, user, package_id="pro")
    assert retired.status_code == 409 and retired.json()["error"]["code"] == "package_retired"
    assert client.get(f"{API}/credits/auto-topup", headers=headers).json()["enabled"] is False
    assert db.get(User, user.id).auto_topup_below is None
    ok = enable(client, user, threshold=40)
    assert ok.status_code == 200 and ok.json()["enabled"] is True
    db.expire_all()
    assert db.get(User, user.id).auto_topup_below == 40
    assert client.put(f"{API}/credits/alerts", json={"low_balance": 0},
                      headers=headers).status_code == 422


def test_saved_cards_follow_stripes_attach_and_detach_events(client, db, stripe_client,
                                                              celery_worker):
    user = make_user(db)
    pm_id = save_card(client, db, stripe_client, user, VISA)
    listed = client.get(f"{API}/payment-methods", headers=auth_headers(user)).json()["items"]
    assert listed[0]["last4"] == "4242" and listed[0]["brand"] == "visa"
    pm = stripe_client.v1.payment_methods.retrieve(pm_id).to_dict()
    detached = se.event("payment_method.detached", {**pm, "customer": None})
    assert se.deliver(client, detached).status_code == 200
    wait_for(lambda: client.get(f"{API}/payment-methods", headers=auth_headers(
        user)).json()["items"] == [], message="the card gone")
    # An older attach delivered late does not bring it back.
    stale = se.event("payment_method.attached", {**pm, "customer": db.get(
        User, user.id).stripe_customer_id}, created=detached["created"] - 60)
    assert se.deliver(client, stale).status_code == 200
    wait_for(lambda: db.scalar(select(func.count()).select_from(SavedPaymentMethod)) == 1,
             message="the row")
    se_deliver_twice = se.deliver(client, detached)  # the same event again: no change
    assert se_deliver_twice.status_code == 200
    other = make_user(db)
    assert client.get(f"{API}/payment-methods", headers=auth_headers(other)).json()["items"] == []


# --- top-up ---------------------------------------------------------------------------------


def test_concurrent_spends_across_the_threshold_top_up_once(
        client, db, stripe_client, settings, live_api, localstripe_webhooks,  # noqa: F811
        celery_worker, receiver):
    rec, secret = receiver
    user = make_user(db, credits=150)
    save_card(client, db, stripe_client, user, VISA)
    assert enable(client, user, threshold=100).status_code == 200
    headers = auth_headers(user)

    def spend(_: int) -> int:
        with httpx.Client(base_url=live_api, timeout=30) as http:
            return http.post(f"{API}/credits/use", json={"credits": 5},
                             headers=headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(spend, range(16))) == {200}
    assert _balance(db, user.id) == 70
    for _ in range(3):  # beat's job, run more often than it would: still one top-up
        task_queue.send_now("topup.crossings")
    wait_for(lambda: _balance(db, user.id) == 170, timeout=20, message="the top-up's credits")
    done = _attempts(db, user.id)
    assert [(a.sequence, a.status) for a in done] == [(1, "succeeded")]
    payments = list(db.scalars(select(Payment).where(Payment.user_id == user.id)))
    assert [(p.status, p.credits, p.amount_cents) for p in payments] == [("succeeded", 100, 1500)]
    purchases = db.scalar(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.user_id == user.id, CreditTransaction.kind == "purchase"))
    assert purchases == 1
    # The charge task run again (a retried message) charges nothing more.
    task_queue.send_now("topup.charge", str(done[0].id))
    task_queue.send_now("topup.crossings")
    wait_for(lambda: rec.events("topup.succeeded"), message="topup.succeeded")
    intents = _intents(stripe_client, db.get(User, user.id).stripe_customer_id)
    assert len(intents) == 1 and intents[0].metadata["topup_id"] == str(done[0].id)
    assert _balance(db, user.id) == 170
    assert len(rec.events("topup.succeeded")) == 1
    assert len(rec.events("payment.succeeded")) == 1
    assert rec.events("topup.succeeded")[0]["data"]["credits"] == 100
    assert rec.verified(secret)


def test_a_retried_charge_returns_the_first_payment_intent(client, db, stripe_client, settings,
                                                           celery_worker):
    """The worker killed between the charge and its record: the retry's idempotency key
    gets Stripe's first PaymentIntent back, so the customer pays once."""
    user = make_user(db, credits=10)
    pm_id = save_card(client, db, stripe_client, user, VISA)
    db.add(AutoTopupSettings(user_id=user.id, enabled=True, threshold=50, package_id="starter",
                             max_per_month=5, consecutive_failures=0, sequence=0))
    db.commit()
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        attempt = attempts.start(session, settings, user_id=user.id, balance=10)
        assert attempt is not None and attempt.payment_method_id == pm_id
        attempt_id = attempt.id
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        request = attempts.charge_request(session, settings, attempt_id)
    assert request is not None
    assert request.idempotency_key == f"billing-topup-{user.id}-1"
    first = charge_stripe(settings, request)
    second = charge_stripe(settings, request)
    assert first.intent_id is not None and second.intent_id == first.intent_id
    customer = db.get(User, user.id).stripe_customer_id
    assert len(_intents(stripe_client, customer)) == 1


@pytest.mark.parametrize(("card", "code"), [
    (DECLINED_ON_CHARGE, "card_declined"),
    (NEEDS_AUTHENTICATION, "authentication_required"),
])
def test_three_failed_top_ups_in_a_row_disable_it_and_tell_user_and_seller(
        client, db, stripe_client, settings, celery_worker, mailbox, receiver, card, code):
    rec, _ = receiver
    user = make_user(db, credits=150)
    save_card(client, db, stripe_client, user, card)
    assert enable(client, user, threshold=100).status_code == 200
    for n in (1, 2, 3):
        _post(settings, user.id, -100)  # crosses below 100
        task_queue.send_now("topup.crossings")
        wait_for(lambda n=n: [a for a in _attempts(db, user.id) if a.status == "failed"][n - 1:],
                 timeout=20, message=f"failed top-up #{n}")
        _post(settings, user.id, 100)  # back above: the next spend crosses again
    failed = _attempts(db, user.id)
    assert [(a.status, a.failure_code) for a in failed] == [("failed", code)] * 3
    got = client.get(f"{API}/credits/auto-topup", headers=auth_headers(user)).json()
    assert got["enabled"] is False and got["consecutive_failures"] == 3
    assert code in got["disabled_reason"]
    assert _balance(db, user.id) == 150  # no credits from a failed charge
    # Disabled: another crossing starts nothing.
    _post(settings, user.id, -100)
    task_queue.send_now("topup.crossings")
    mails = [mailbox.wait_for(user.email, count=n) for n in (1, 2, 3)]
    assert all("top-up failed" in m["Subject"] for m in mails)
    if code == "authentication_required":
        assert "confirm the payment yourself" in body(mails[0])
    seller = wait_for(lambda: len(rec.events("topup.failed")) == 3 and rec.events("topup.failed"),
                      message="three topup.failed")
    assert [e["data"]["auto_topup_disabled"] for e in seller] == [False, False, True]
    assert {e["data"]["failure_code"] for e in seller} == {code}
    assert len(_attempts(db, user.id)) == 3
    history = client.get(f"{API}/credits/auto-topup/history",
                         headers=auth_headers(user)).json()["items"]
    assert [h["sequence"] for h in history] == [3, 2, 1]


def test_limits_skip_a_top_up_max_per_month_and_the_daily_loop_guard(db, settings):
    user = make_user(db)
    db.add(SavedPaymentMethod(id=f"pm_{uuid.uuid4().hex[:12]}", user_id=user.id, type="card"))
    db.add(AutoTopupSettings(user_id=user.id, enabled=True, threshold=50, package_id="starter",
                             max_per_month=2, consecutive_failures=0, sequence=2))
    for seq, status, age in ((1, "succeeded", 0), (2, "succeeded", 0)):
        db.add(TopupAttempt(user_id=user.id, sequence=seq, package_id="starter", status=status,
                            balance_at_start=0, created_at=utc_now() - timedelta(minutes=age)))
    db.commit()
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        skipped = attempts.start(session, settings, user_id=user.id, balance=10)
        assert skipped is not None and skipped.status == "skipped"
        assert skipped.failure_code == "max_per_month"
    strict = settings.model_copy(update={"topup_daily_limit": 2})
    row = db.get(AutoTopupSettings, user.id)
    row.max_per_month = 100
    db.commit()
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        guarded = attempts.start(session, strict, user_id=user.id, balance=10)
        assert guarded is not None and guarded.failure_code == "daily_limit"
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        started = attempts.start(session, settings, user_id=user.id, balance=10)
        assert started is not None and started.status == "pending" and started.sequence == 5
        # At most one in flight: a second crossing meanwhile starts nothing.
        assert attempts.start(session, settings, user_id=user.id, balance=5) is None


# --- low-balance alerts ---------------------------------------------------------------------


def test_low_balance_alert_once_per_crossing_rearmed_above_and_depleted_at_zero(
        client, db, settings, celery_worker, mailbox, receiver):
    rec, _ = receiver
    user = make_user(db, credits=100)
    put = client.put(f"{API}/credits/alerts", json={"low_balance": 50},
                     headers=auth_headers(user))
    assert put.status_code == 200 and put.json() == {"low_balance": 50}
    _post(settings, user.id, -60)  # 40: below
    _post(settings, user.id, -10)  # 30: still below, no second alert
    _post(settings, user.id, -30)  # 0: depleted
    task_queue.send_now("topup.crossings")
    task_queue.send_now("topup.crossings")
    wait_for(lambda: rec.events("credits.depleted"), message="credits.depleted")
    mailbox.wait_for(user.email)
    _post(settings, user.id, 100)  # 100: above again, re-armed
    _post(settings, user.id, -70)  # 30: below again
    task_queue.send_now("topup.crossings")
    wait_for(lambda: len(rec.events("credits.low")) == 2, message="the second credits.low")
    mailbox.wait_for(user.email, count=2)
    low = rec.events("credits.low")
    assert [(e["data"]["balance"], e["data"]["threshold"]) for e in low] == [(40, 50), (30, 50)]
    assert len(rec.events("credits.depleted")) == 1
    assert "low" in mailbox.to(user.email)[0]["Subject"]
    assert len(mailbox.to(user.email)) == 2
