"""Starting a purchase: Stripe objects from the package table, a pending payment, no credits yet."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from db.models import CreditPackage, Payment, User
from tests.factories import auth_headers, make_user
from tests.support import free_port

API = "/api/user-management"


def _purchase(client, user, **body):
    return client.post(f"{API}/credits/purchase", json=body, headers=auth_headers(user))


def _payments(db) -> list[Payment]:
    db.expire_all()
    return list(db.scalars(select(Payment)))


def test_payment_intent_flow_creates_intent_in_stripe_with_package_price(
    client, db, stripe_client
):
    user = make_user(db)
    response = _purchase(client, user, package_id="pro", flow="payment_intent")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["client_secret"] and body["checkout_url"] is None
    (payment,) = _payments(db)
    assert str(payment.id) == body["payment_id"]
    assert (payment.status, payment.flow, payment.package_id) == ("pending", "payment_intent", "pro")
    package = db.get(CreditPackage, "pro")
    assert (payment.amount_cents, payment.credits) == (package.price_cents, package.credits)
    intent = stripe_client.v1.payment_intents.retrieve(payment.stripe_payment_intent_id)
    assert (intent.amount, intent.currency) == (package.price_cents, "usd")
    assert intent.client_secret == body["client_secret"]
    assert intent.metadata.to_dict() == {
        "payment_id": str(payment.id), "user_id": str(user.id), "package_id": "pro"
    }
    customer = db.get(User, user.id).stripe_customer_id
    assert intent.customer == customer
    # No credits until Stripe confirms the payment through the event pipeline.
    assert db.get(User, user.id).credit_balance == 0


def test_checkout_flow_creates_session_in_payment_mode_from_package_table(
    client, db, stripe_stub
):
    user = make_user(db)
    response = _purchase(client, user, package_id="starter")
    assert response.status_code == 201, response.text
    body = response.json()
    (payment,) = _payments(db)
    assert body["payment_id"] == str(payment.id)
    assert body["session_id"] == payment.stripe_checkout_session_id
    assert body["checkout_url"].startswith("https://")
    sent = stripe_stub.session_params[body["session_id"]]
    metadata = {"payment_id": str(payment.id), "user_id": str(user.id), "package_id": "starter"}
    assert sent["mode"] == "payment"
    assert sent["client_reference_id"] == str(payment.id)
    assert sent["metadata"] == metadata
    assert sent["payment_intent_data"]["metadata"] == metadata
    (item,) = sent["line_items"]
    assert item["price_data"]["unit_amount"] == "1500"
    assert item["price_data"]["currency"] == "usd"
    assert sent["success_url"].startswith("http://127.0.0.1:8000/")
    assert sent["customer"] == db.get(User, user.id).stripe_customer_id


def test_checkout_session_is_readable_through_the_sdk(client, db, settings):
    from services.payments import stripe_gateway

    user = make_user(db)
    body = _purchase(client, user, package_id="starter").json()
    session = stripe_gateway.client(settings).v1.checkout.sessions.retrieve(body["session_id"])
    assert session.client_reference_id == body["payment_id"]
    assert session.amount_total == 1500
    assert session.metadata["payment_id"] == body["payment_id"]


def test_customer_is_created_once_per_user(client, db, stripe_client):
    user = make_user(db)
    _purchase(client, user, package_id="starter")
    db.expire_all()
    first = db.get(User, user.id).stripe_customer_id
    _purchase(client, user, package_id="pro", flow="payment_intent")
    db.expire_all()
    assert first and db.get(User, user.id).stripe_customer_id == first
    customer = stripe_client.v1.customers.retrieve(first)
    assert customer.metadata["user_id"] == str(user.id)
    assert len(_payments(db)) == 2


def test_price_comes_from_server_and_client_price_fields_are_refused(client, db):
    user = make_user(db)
    response = _purchase(client, user, package_id="starter", price_cents=1)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert _payments(db) == []


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"package_id": "gold"}, 404, "package_not_found"),
        ({}, 422, "validation_error"),
        ({"package_id": 5}, 422, "validation_error"),
        ({"package_id": "starter", "flow": "bank"}, 422, "validation_error"),
        ({"package_id": "starter", "success_url": "https://evil.example/phish"}, 400,
         "redirect_not_allowed"),
        ({"package_id": "starter", "cancel_url": "http://127.0.0.1:9999/x"}, 400,
         "redirect_not_allowed"),
        ({"package_id": "starter", "success_url": "javascript:alert(1)"}, 422,
         "validation_error"),
    ],
)
def test_bad_purchase_input_is_4xx_and_creates_nothing(client, db, body, status, code):
    user = make_user(db)
    response = client.post(f"{API}/credits/purchase", json=body, headers=auth_headers(user))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert _payments(db) == []


def test_redirect_on_the_configured_host_is_used(client, db, stripe_stub):
    user = make_user(db)
    target = "http://127.0.0.1:8000/app/thanks"
    body = _purchase(client, user, package_id="starter", success_url=target).json()
    assert stripe_stub.session_params[body["session_id"]]["success_url"] == target


def test_retired_package_cannot_be_bought_but_old_payments_keep_it(client, db):
    user = make_user(db)
    assert _purchase(client, user, package_id="pro").status_code == 201
    package = db.get(CreditPackage, "pro")
    package.active = False
    db.commit()
    response = _purchase(client, user, package_id="pro")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "package_retired"
    (payment,) = _payments(db)
    assert payment.package_id == "pro"
    listed = [p["id"] for p in client.get(f"{API}/credit-packages").json()]
    assert "pro" not in listed


@pytest.fixture
def stripe_down_client(settings):
    """The app with Stripe pointed at a port nothing listens on."""
    dead = settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{free_port()}"})
    with TestClient(create_app(dead), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("flow", ["checkout", "payment_intent"])
def test_stripe_down_is_503_and_leaves_no_pending_payment(stripe_down_client, db, flow):
    user = make_user(db)
    response = _purchase(stripe_down_client, user, package_id="starter", flow=flow)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "stripe_unavailable"
    assert "sk_" not in response.text
    assert _payments(db) == []
    assert db.scalar(select(func.count()).select_from(Payment)) == 0
    assert db.get(User, user.id).stripe_customer_id is None


def test_second_purchase_while_stripe_is_down_leaves_the_first_intact(
    client, stripe_down_client, db
):
    user = make_user(db)
    first = _purchase(client, user, package_id="starter", flow="payment_intent").json()
    response = _purchase(stripe_down_client, user, package_id="pro", flow="payment_intent")
    assert response.status_code == 503
    (payment,) = _payments(db)
    assert str(payment.id) == first["payment_id"]
    assert payment.status == "pending"


def test_purchase_with_idempotency_key_makes_one_payment(client, db):
    user = make_user(db)
    headers = {**auth_headers(user), "Idempotency-Key": f"buy-{uuid.uuid4()}"}
    body = {"package_id": "starter", "flow": "payment_intent"}
    first = client.post(f"{API}/credits/purchase", json=body, headers=headers)
    again = client.post(f"{API}/credits/purchase", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(_payments(db)) == 1


def test_stub_forwards_other_paths_to_localstripe(stripe_stub):
    response = httpx.post(
        f"{stripe_stub.url}/v1/customers",
        data={"email": "fwd@example.com"},
        auth=("sk_test_x", ""),
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"].startswith("cus_")
