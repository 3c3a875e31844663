"""Signed Stripe-shaped events for tests, built from Stripe's own object fixtures.

localstripe sends no refund, dispute, checkout or subscription-update events, so tests
build them: the ``data.object`` starts from ``tests/fixtures/stripe_objects.json`` (Stripe's
published examples) with ids, amounts, metadata and statuses changed, and the delivery is
signed as Stripe signs it: ``Stripe-Signature: t=<unix>,v1=<HMAC-SHA256("<t>.<body>")>``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from db.models import Payment
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.factories import auth_headers

FIXTURES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "fixtures" / "stripe_objects.json").read_text()
)
WEBHOOK_PATH = "/api/user-management/webhook/stripe"
# One registration id for everyone: registering again replaces it (localstripe keys by id).
LOCALSTRIPE_WEBHOOK_ID = "billing-tests"


def new_id(prefix: str) -> str:
    """A fresh Stripe-style id (``evt_test…``, ``ch_test…``)."""
    return f"{prefix}_test{uuid.uuid4().hex[:20]}"


def stripe_object(kind: str, **fields: Any) -> dict[str, Any]:
    """A copy of Stripe's example ``kind`` object with ``fields`` replaced."""
    obj = copy.deepcopy(FIXTURES[kind])
    obj.update(fields)
    return obj


def event(
    event_type: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A Stripe event of ``event_type`` carrying ``obj``."""
    evt = copy.deepcopy(FIXTURES["event"])
    evt.update(
        id=event_id or new_id("evt"),
        type=event_type,
        created=created if created is not None else int(time.time()),
        livemode=False,
        data={"object": obj},
        api_version="2024-06-20",
    )
    return evt


def signature(body: bytes, *, secret: str = TEST_WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe would send with ``body``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def deliver(
    client: Any, evt: dict[str, Any], *, secret: str = TEST_WEBHOOK_SECRET,
    timestamp: int | None = None,
) -> httpx.Response:
    """POST ``evt`` to the webhook, signed (``client``: a TestClient or an httpx client)."""
    body = json.dumps(evt).encode()
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": signature(body, secret=secret, timestamp=timestamp),
    }
    return client.post(WEBHOOK_PATH, content=body, headers=headers)


# --- objects about one of our payments --------------------------------------------------------


def _meta(payment: Payment) -> dict[str, str]:
    return {
        "payment_id": str(payment.id),
        "user_id": str(payment.user_id),
        "package_id": payment.package_id or "",
    }


def payment_intent(
    payment: Payment, *, status: str = "succeeded", amount: int | None = None,
    with_metadata: bool = True, error: str | None = None,
) -> dict[str, Any]:
    """The payment's PaymentIntent as Stripe sends it in ``payment_intent.*`` events."""
    amount = payment.amount_cents if amount is None else amount
    return stripe_object(
        "payment_intent",
        id=payment.stripe_payment_intent_id,
        amount=amount,
        amount_received=amount if status == "succeeded" else 0,
        currency=payment.currency.lower(),
        status=status,
        latest_charge=payment.stripe_charge_id,
        metadata=_meta(payment) if with_metadata else {},
        last_payment_error=(
            {"code": "card_declined", "message": error} if error is not None else None
        ),
    )


def checkout_session(
    payment: Payment, *, payment_status: str = "paid", status: str = "complete"
) -> dict[str, Any]:
    """The payment's Checkout Session as Stripe sends it in ``checkout.session.*`` events."""
    return stripe_object(
        "checkout.session",
        id=payment.stripe_checkout_session_id,
        mode="payment",
        status=status,
        payment_status=payment_status,
        amount_total=payment.amount_cents,
        amount_subtotal=payment.amount_cents,
        currency=payment.currency.lower(),
        client_reference_id=str(payment.id),
        payment_intent=payment.stripe_payment_intent_id,
        metadata=_meta(payment),
    )


def charge(payment: Payment, *, amount_refunded: int = 0) -> dict[str, Any]:
    """The payment's charge (``charge.refunded`` carries the running refunded total)."""
    return stripe_object(
        "charge",
        id=payment.stripe_charge_id,
        amount=payment.amount_cents,
        amount_captured=payment.amount_cents,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= payment.amount_cents,
        currency=payment.currency.lower(),
        payment_intent=payment.stripe_payment_intent_id,
    )


def dispute(
    payment: Payment, *, dispute_id: str, status: str, amount: int | None = None
) -> dict[str, Any]:
    """A dispute of the payment's charge."""
    return stripe_object(
        "dispute",
        id=dispute_id,
        amount=payment.amount_cents if amount is None else amount,
        currency=payment.currency.lower(),
        charge=payment.stripe_charge_id,
        payment_intent=payment.stripe_payment_intent_id,
        status=status,
    )


# --- subscriptions ----------------------------------------------------------------------------


def subscription(
    sub_id: str, *, customer: str, stripe_plan_id: str, status: str,
    metadata: dict[str, str] | None = None, cancel_at_period_end: bool = False,
    canceled_at: int | None = None, period_start: int | None = None,
) -> dict[str, Any]:
    """A subscription on one plan (items carry the plan, as Stripe sends them)."""
    start = period_start or int(time.time())
    obj = stripe_object(
        "subscription",
        id=sub_id,
        customer=customer,
        status=status,
        metadata=metadata or {},
        cancel_at_period_end=cancel_at_period_end,
        canceled_at=canceled_at,
        ended_at=canceled_at,
        cancel_at=None,
    )
    item = obj["items"]["data"][0]
    item.update(
        subscription=sub_id, current_period_start=start, current_period_end=start + 30 * 86_400
    )
    item["plan"].update(id=stripe_plan_id, billing_scheme="per_unit", currency="usd")
    item["price"].update(id=stripe_plan_id)
    obj["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    return obj


def invoice(
    invoice_id: str, *, sub_id: str, customer: str, stripe_plan_id: str, amount_paid: int,
    status: str = "paid",
) -> dict[str, Any]:
    """A subscription invoice in the current API shape (subscription under ``parent``)."""
    obj = stripe_object(
        "invoice",
        id=invoice_id,
        customer=customer,
        status=status,
        amount_paid=amount_paid if status == "paid" else 0,
        amount_due=amount_paid,
        currency="usd",
        subscription=None,
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
        },
    )
    line = obj["lines"]["data"][0]
    line.update(amount=amount_paid, invoice=invoice_id)
    line["pricing"] = {"type": "price_details", "price_details": {"price": stripe_plan_id}}
    return obj


# --- localstripe as a webhook sender ----------------------------------------------------------


def buy_with_intent(client, user) -> tuple[uuid.UUID, str]:
    """POST /credits/purchase (PaymentIntent flow): the payment id and its PaymentIntent id."""
    started = client.post(
        "/api/user-management/credits/purchase",
        json={"package_id": "starter", "flow": "payment_intent"},
        headers=auth_headers(user),
    )
    assert started.status_code == 201, started.text
    payment_id = uuid.UUID(started.json()["payment_id"])
    return payment_id, started.json()["client_secret"].split("_secret_")[0]


def pay(stripe_client, intent_id: str, card: str) -> None:
    """What Stripe.js does in the browser: attach the card, confirm."""
    stripe_client.v1.payment_intents.update(intent_id, params={"payment_method": card})
    stripe_client.v1.payment_intents.confirm(intent_id)



def point_localstripe_webhooks(localstripe_url: str, url: str) -> None:
    """Make localstripe send its events (signed with the test secret) to ``url``."""
    response = httpx.post(
        f"{localstripe_url}/_config/webhooks/{LOCALSTRIPE_WEBHOOK_ID}",
        data={"url": url, "secret": TEST_WEBHOOK_SECRET},
        timeout=10,
    )
    response.raise_for_status()


@pytest.fixture
def localstripe_webhooks(localstripe_url: str, live_api: str) -> Iterator[str]:
    """localstripe delivers its events to the live API's webhook for this test only."""
    point_localstripe_webhooks(localstripe_url, live_api + WEBHOOK_PATH)
    yield live_api
    # localstripe sends each event a second after the action, to the URL of that moment:
    # the events of this test's last actions must not land in the next test's inbox.
    point_localstripe_webhooks(localstripe_url, live_api + "/_no_webhook_here")
