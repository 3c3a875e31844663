"""End to end with localstripe, and what goes wrong: crashes, a broker outage, missed webhooks."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import CreditTransaction, Payment, StripeEvent, User
from services import task_queue
from tests import stripe_events as se
from tests.factories import auth_headers, make_payment, make_user
from tests.stripe_events import localstripe_webhooks  # noqa: F401 - fixtures
from tests.support import free_port, wait_for

API = "/api/user-management"


def _balance(db, user) -> int:
    db.expire_all()
    return db.get(User, user.id).credit_balance


def _payment(db, payment_id) -> Payment:
    db.expire_all()
    return db.get(Payment, payment_id)


@pytest.mark.usefixtures("localstripe_webhooks")
def test_visa_purchase_grants_credits_through_the_webhook_and_a_worker(
    client, db, celery_worker, stripe_client
):
    user = make_user(db)
    payment_id, intent_id = se.buy_with_intent(client, user)
    assert _balance(db, user) == 0  # starting a purchase grants nothing

    se.pay(stripe_client, intent_id, "pm_card_visa")

    wait_for(lambda: _balance(db, user) == 100, timeout=30, message="credits from the webhook")
    payment = _payment(db, payment_id)
    assert payment.status == "succeeded" and payment.stripe_charge_id
    event = db.scalars(
        select(StripeEvent).where(StripeEvent.type == "payment_intent.succeeded")
    ).one()
    assert event.status == "processed"
    assert event.payload["data"]["object"]["id"] == intent_id


@pytest.mark.usefixtures("localstripe_webhooks")
def test_declined_card_fails_the_payment_and_grants_nothing(
    client, db, celery_worker, stripe_client
):
    user = make_user(db)
    payment_id, intent_id = se.buy_with_intent(client, user)
    # localstripe 1.15 declines pm_card_visa_chargeDeclined only when it is attached to a
    # customer; the card it declines on charge (as Stripe declines both) is this one.
    with pytest.raises(stripe.CardError):
        se.pay(stripe_client, intent_id, "pm_card_chargeCustomerFail")

    wait_for(lambda: _payment(db, payment_id).status == "failed", timeout=30,
             message="payment_intent.payment_failed applied")
    assert _payment(db, payment_id).failure_reason == "Your card was declined."
    assert _balance(db, user) == 0
    assert db.scalar(select(func.count()).select_from(CreditTransaction)) == 0


def test_reconciliation_finds_an_event_sent_while_the_endpoint_was_down(
    client, db, celery_worker, stripe_client, localstripe_url, live_api
):
    started_at = int(time.time())
    user = make_user(db)
    payment_id, intent_id = se.buy_with_intent(client, user)
    se.point_localstripe_webhooks(localstripe_url, f"http://127.0.0.1:{free_port()}/down")
    try:
        se.pay(stripe_client, intent_id, "pm_card_visa")
        wait_for(
            lambda: any(e.data.object.id == intent_id for e in stripe_client.v1.events.list(
                params={"type": "payment_intent.succeeded", "created": {"gte": started_at}}
            ).data),
            timeout=10, message="localstripe to record the event",
        )
        time.sleep(2.5)  # localstripe tried to deliver (after ~1 s) to the dead endpoint
    finally:
        se.point_localstripe_webhooks(localstripe_url, live_api + se.WEBHOOK_PATH)
    db.expire_all()
    delivered = [e.payload["data"]["object"].get("id") for e in db.scalars(select(StripeEvent))]
    assert intent_id not in delivered  # the webhook never brought it
    assert _balance(db, user) == 0

    task_queue.send_now("stripe.reconcile", int(time.time()) - started_at + 5)

    wait_for(lambda: _balance(db, user) == 100, timeout=30, message="the reconciled event")
    assert _payment(db, payment_id).status == "succeeded"


@pytest.mark.usefixtures("only_own_worker")
def test_worker_killed_mid_burst_moves_each_payment_exactly_once(client, db, own_worker):
    users = [make_user(db) for _ in range(10)]
    payments = [make_payment(db, users[i % 10]) for i in range(300)]
    events = [se.event("payment_intent.succeeded", se.payment_intent(p)) for p in payments]
    for evt in events:
        assert se.deliver(client, evt).status_code == 200  # queued; no worker consumes yet

    def processed() -> int:
        db.expire_all()
        return db.scalar(
            select(func.count()).select_from(StripeEvent).where(StripeEvent.status == "processed")
        ) or 0

    own_worker.start()
    wait_for(lambda: processed() >= 20, timeout=60, interval=0.01, message="processing under way")
    own_worker.kill()
    at_kill = processed()
    assert at_kill < len(events), "the burst finished before the worker could be killed"

    own_worker.start()

    def all_done() -> bool:
        # What beat does: a sweep now and then (redelivery of the killed tasks also comes).
        task_queue.send_now("stripe.sweep", 5)
        return processed() == len(events)

    wait_for(all_done, timeout=120, interval=2.0, message="every event processed")
    grants = db.execute(
        select(CreditTransaction.reference_id, func.count())
        .where(CreditTransaction.kind == "purchase")
        .group_by(CreditTransaction.reference_id)
    ).all()
    assert len(grants) == len(payments) and all(n == 1 for _, n in grants)
    assert sum(_balance(db, u) for u in users) == 100 * len(payments)
    db.expire_all()
    assert all(db.get(Payment, p.id).status == "succeeded" for p in payments)


def test_events_arriving_while_redis_is_down_are_stored_and_swept_later(
    settings, db, tmp_path, celery_worker
):
    from api.app import create_app
    from cli.embedded import EmbeddedRedis

    broker = EmbeddedRedis(tmp_path, persist=False)
    api_settings = settings.model_copy(update={"redis_url": broker.start()})
    user = make_user(db)
    payments = [make_payment(db, user) for _ in range(5)]
    events = [se.event("payment_intent.succeeded", se.payment_intent(p)) for p in payments]
    try:
        with TestClient(create_app(api_settings)) as api:
            broker.stop()
            answers = [se.deliver(api, evt).status_code for evt in events]
            broker.start()
    finally:
        broker.stop()
        # This test's app installed its broker as the process's sender: put the shared one back.
        task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(settings.redis_url)))

    assert answers == [200] * 5
    db.expire_all()
    statuses = db.scalars(select(StripeEvent.status)).all()
    assert statuses == ["pending"] * 5  # stored, never enqueued
    assert _balance(db, user) == 0

    task_queue.send_now("stripe.sweep", 0)  # beat's sweep, due now

    wait_for(lambda: _balance(db, user) == 500, timeout=30, message="the swept events")
    db.expire_all()
    assert db.scalars(select(StripeEvent.status)).all() == ["processed"] * 5


@pytest.mark.usefixtures("only_own_worker")
def test_event_failing_every_try_is_parked_listed_and_retried_by_an_admin(
    client, db, own_worker
):
    own_worker.extra_env = {"BILLING_STRIPE_EVENT_MAX_ATTEMPTS": "2"}
    own_worker.start()
    user = make_user(db)
    admin = make_user(db, role="admin")
    payment = make_payment(db, user)
    # The event names a payment the database does not have (yet): retried, then parked.
    kept = {c: getattr(payment, c) for c in ("id", "user_id", "package_id", "flow", "amount_cents",
                                             "currency", "credits", "stripe_payment_intent_id")}
    db.delete(payment)
    db.commit()
    missing = se.event("payment_intent.succeeded", se.payment_intent(payment))
    wrong = se.event("payment_intent.succeeded", se.payment_intent(payment, amount=5))
    se.deliver(client, missing)
    wait_for(lambda: db.get(StripeEvent, missing["id"]) is not None and
             db.get(StripeEvent, missing["id"]).status == "failed" or db.expire_all(),
             timeout=30, message="the event parked as failed")
    row = db.get(StripeEvent, missing["id"])
    assert row.attempts == 2 and row.last_error.startswith("NotReady: payment ")

    headers = auth_headers(admin)
    page = client.get(f"{API}/admin/webhook-events", params={"status": "failed"}, headers=headers)
    assert [e["id"] for e in page.json()["items"]] == [missing["id"]]
    assert client.get(f"{API}/admin/webhook-events", params={"status": "failed"},
                      headers=auth_headers(user)).status_code == 403

    db.add(Payment(**kept, status="pending"))  # the payment's row finally exists
    db.commit()
    retried = client.post(f"{API}/admin/webhook-events/{missing['id']}/retry", headers=headers)
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    wait_for(lambda: _balance(db, user) == 100, timeout=30, message="the retried event")
    again = client.post(f"{API}/admin/webhook-events/{missing['id']}/retry", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "event_done"

    se.deliver(client, wrong)  # contradicts the payment: parked at once, not retried
    wait_for(lambda: db.expire_all() or db.get(StripeEvent, wrong["id"]).status == "failed",
             timeout=30, message="the mismatched event parked")
    first = client.get(f"{API}/admin/webhook-events", params={"limit": 1}, headers=headers).json()
    second = client.get(f"{API}/admin/webhook-events",
                        params={"limit": 1, "cursor": first["next_cursor"]}, headers=headers).json()
    assert [first["items"][0]["id"], second["items"][0]["id"]] == [wrong["id"], missing["id"]]
    assert second["next_cursor"] is None
    detail = client.get(f"{API}/admin/webhook-events/{wrong['id']}", headers=headers).json()
    assert detail["payload"] == wrong and detail["attempts"] == 1
    assert _balance(db, user) == 100
    assert httpx.codes.is_success(
        client.get(f"{API}/admin/webhook-events", params={"status": "processed"}, headers=headers)
        .status_code
    )
