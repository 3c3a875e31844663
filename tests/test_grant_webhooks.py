"""``credits.granted`` / ``credits.expired`` webhooks to a real receiver: one per grant made and
per grant expired, whatever made or expired it, however many announcing sweeps run, and none
for a cause that rolled back."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from db import rls
from db.base import utc_now
from db.models import CreditGrant, GrantNotice, WebhookDelivery, WebhookEvent
from db.transaction import transaction
from services import task_queue
from services.credits import events, grants, ledger
from services.payments import settlement, subscriptions
from services.payments.stripe_objects import InvoiceLine, StripeInvoice
from tests.factories import auth_headers, make_payment, make_plan, make_user
from tests.support import on_event_loop, wait_for
from tests.webhook_receiver import Receiver

API = "/api/user-management"
ADMIN = f"{API}/admin"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def endpoint(client, db, receiver) -> dict:
    admin = make_user(db, role="admin")
    answer = client.post(f"{ADMIN}/webhook-endpoints", headers=auth_headers(admin), json={
        "url": receiver.url, "events": ["credits.granted", "credits.expired"]})
    assert answer.status_code == 201, answer.text
    return {**answer.json(), "admin": admin}


def _announce(settings) -> int:
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return events.announce_pending(session)


def _announce_twice_at_once_then_again(settings) -> int:
    """Two sweeps racing, then a third: together they announce each notice once."""
    barrier = threading.Barrier(2)
    counts: list[int] = []

    def sweep() -> None:
        barrier.wait()
        counts.append(_announce(settings))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counts) == 2
    return sum(counts) + _announce(settings)


def _events(db, event_type: str) -> list[WebhookEvent]:
    db.expire_all()
    return list(db.scalars(select(WebhookEvent).where(WebhookEvent.type == event_type)
                           .order_by(WebhookEvent.created_at, WebhookEvent.id)))


def _lapse(db, grant_id: int) -> None:
    db.execute(update(CreditGrant).where(CreditGrant.id == grant_id)
               .values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()


def _received(receiver: Receiver, n: int) -> dict[str, dict]:
    """The events the receiver got, by id, once it has ``n`` of them."""
    got = wait_for(lambda: len(receiver.events()) >= n and receiver.events(),
                   message=f"{n} deliveries")
    return {e["id"]: e for e in got}


def test_each_way_of_granting_credits_sends_one_credits_granted(
        client, db, settings, celery_worker, receiver, endpoint):
    user = make_user(db)
    admin_headers = auth_headers(endpoint["admin"])
    # A purchase settled.
    payment = make_payment(db, user)
    settlement.settle(db, settlement.find_payment(db, payment_id=payment.id),
                      amount_cents=1500, currency="USD")
    db.commit()
    # A subscription invoice paid.
    plan = make_plan(db, monthly_credits=300, price_cents=2000)
    subscriptions.grant_invoice(db, StripeInvoice(
        id=f"in_{uuid.uuid4().hex[:12]}", status="paid", customer=None, user_id=user.id,
        plan_id=plan.id, price_ids=(plan.stripe_plan_id,), subscription_id="sub_hooks",
        amount_paid=2000, tax=0, currency="USD", payment_intent=None,
        billing_reason="subscription_cycle", lines=(InvoiceLine((plan.stripe_plan_id,), 2000),),
        period_end=(utc_now() + timedelta(days=30)).replace(microsecond=0)))
    db.commit()
    # An admin's bonus, an admin's positive adjustment, a promo code redeemed.
    bonus_expiry = (utc_now() + timedelta(days=7)).replace(microsecond=0)
    for path, body in ((f"users/{user.id}/grants", {"amount": 25, "reason": "launch",
                                                   "expires_at": bonus_expiry.isoformat()}),
                       (f"users/{user.id}/credits", {"amount": 7, "reason": "goodwill"}),
                       ("promo-codes", {"code": "HOOKS", "credits": 40})):
        answer = client.post(f"{ADMIN}/{path}", json=body, headers=admin_headers)
        assert answer.status_code in (200, 201), answer.text
    redeemed = client.post(f"{API}/credits/redeem", json={"code": "hooks"},
                           headers=auth_headers(user))
    assert redeemed.status_code == 201, redeemed.text
    # A spend makes no grant and expires none: no notice.
    on_event_loop(settings.database_url,
                  lambda aio: ledger.spend(aio, user_id=user.id, credits=3))

    assert _announce_twice_at_once_then_again(settings) == 5
    assert _announce(settings) == 0
    made = db.scalars(select(CreditGrant).where(CreditGrant.user_id == user.id)).all()
    sent = _events(db, "credits.granted")
    assert sorted(e.payload["data"]["grant_id"] for e in sent) == sorted(g.id for g in made)
    by_source = {e.payload["data"]["source"]: e.payload["data"] for e in sent}
    assert {s: (d["amount"], d["remaining"]) for s, d in by_source.items()} == {
        "purchase": (100, 100), "subscription": (300, 300), "bonus": (25, 25),
        "admin": (7, 7), "promo": (40, 40)}
    assert by_source["bonus"]["expires_at"] == bonus_expiry.isoformat()
    assert by_source["bonus"]["user_id"] == str(user.id)
    assert by_source["purchase"]["expires_at"] is None
    assert all(e.user_id == user.id for e in sent)

    got = _received(receiver, 5)
    assert sorted(got) == sorted(e.id for e in sent)
    assert {e["type"] for e in got.values()} == {"credits.granted"}
    assert receiver.verified(endpoint["secret"])
    assert db.scalar(select(func.count()).select_from(WebhookDelivery)) == 5


def test_each_way_of_expiring_sends_one_credits_expired_and_announcing_is_idempotent(
        client, db, settings, celery_worker, receiver, endpoint):
    swept, read, spent = (make_user(db) for _ in range(3))
    lapsing = {}
    for user, credits in ((swept, 11), (read, 12), (spent, 13)):
        lapsing[user.id] = ledger.post(db, user_id=user.id, amount=credits, kind="promo",
                                       expires_at=utc_now() + timedelta(days=1))
        db.commit()
    ledger.post(db, user_id=spent.id, amount=50, kind="purchase")
    db.commit()
    assert _announce(settings) == 4  # the grants, announced before anything expires
    wait_for(lambda: len(receiver.events()) == 4, message="the grants' deliveries")

    # Expired by the beat's sweep, twice at once (one expiry row), ...
    _lapse(db, lapsing[swept.id].grant_id)
    swept_twice = [0, 0]

    def sweep(i: int) -> None:
        swept_twice[i] = grants.expire_due(
            lambda: transaction(settings.database_url, acting_as=rls.OWNER))

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(swept_twice) == 1
    # ... by a read of the balance, ...
    _lapse(db, lapsing[read.id].grant_id)
    body = client.get(f"{API}/credits", headers=auth_headers(read)).json()
    assert body["balance"] == 0
    # ... and inside a spend's own statement (the spend goes on with the other grant).
    _lapse(db, lapsing[spent.id].grant_id)
    entry = on_event_loop(settings.database_url,
                          lambda aio: ledger.spend(aio, user_id=spent.id, credits=5))
    assert entry.balance_after == 45

    # The beat's task (in the worker) races two sweeps here and a third after them.
    task_queue.send_now("credits.announce")
    assert _announce_twice_at_once_then_again(settings) <= 3
    wait_for(lambda: db.scalar(select(func.count()).select_from(GrantNotice)) == 0,
             message="every notice announced")
    expired = _events(db, "credits.expired")
    assert {e.user_id: (e.payload["data"]["grant_id"], e.payload["data"]["expired"],
                        e.payload["data"]["source"]) for e in expired} == {
        user_id: (posted.grant_id, credits, "promo")
        for (user_id, posted), credits in zip(lapsing.items(), (11, 12, 13), strict=True)}

    got = _received(receiver, 7)
    assert len(got) == 7  # four grants, three expiries, each once
    assert sorted(i for i, e in got.items() if e["type"] == "credits.expired") == sorted(
        e.id for e in expired)
    assert _announce(settings) == 0


def test_a_grant_rolled_back_announces_nothing(db, settings, endpoint):
    user = make_user(db)
    with pytest.raises(RuntimeError, match="after the grant"):
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            entry = ledger.post(session, user_id=user.id, amount=30, kind="bonus")
            assert entry is not None and entry.grant_id is not None
            raise RuntimeError("the cause fails after the grant")
    kept = ledger.post(db, user_id=user.id, amount=8, kind="bonus")
    db.commit()
    assert kept is not None
    assert _announce(settings) == 1
    (sent,) = _events(db, "credits.granted")
    assert (sent.payload["data"]["grant_id"], sent.payload["data"]["amount"]) == (
        kept.grant_id, 8)
    assert db.scalar(select(func.count()).select_from(WebhookEvent)) == 1
