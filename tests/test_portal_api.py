"""What the portal asks of the API: sign-in methods, signing out everywhere, one payment and
its receipt, paying with a test card on the local Stripe peer, and readable console mail."""

from __future__ import annotations

import email
import email.policy
import uuid

import pytest
from pydantic import SecretStr

from db.base import utc_now
from db.models import Payment, User
from services.auth.refresh import sign_in
from services.mail import ConsoleMailSender, FileMailSender, Mail
from settings import SettingsError, load_settings
from tests.factories import auth_headers, make_payment, make_user
from tests.stripe_events import localstripe_webhooks  # noqa: F401 - a fixture
from tests.support import free_port, wait_for

API = "/api/user-management"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- sign-in methods ----------------------------------------------------------------------------


def test_sign_in_methods_show_what_this_server_offers(client, make_client):
    methods = client.get("/api/auth/methods")
    assert methods.status_code == 200
    assert methods.json() == {
        "password": True, "magic_link": True, "phone": True, "google": False,
        "password_min_length": 10, "email_confirmation_required": True,
    }
    google = make_client(google_client_id="client-1", google_client_secret=SecretStr("s" * 20))
    assert google.get("/api/auth/methods").json()["google"] is True


def test_production_does_not_offer_methods_whose_sender_only_prints(make_client):
    printing = make_client(environment="production", mail_backend="console",
                           sms_backend="file").get("/api/auth/methods").json()
    assert (printing["magic_link"], printing["phone"]) == (False, False)
    sending = make_client(environment="production", mail_backend="smtp").get(
        "/api/auth/methods").json()
    assert sending["magic_link"] is True and sending["password"] is True


# --- signing out everywhere ---------------------------------------------------------------------


def test_sign_out_everywhere_ends_every_sign_in_of_the_account_and_only_its(client, db,
                                                                            settings):
    user, other = make_user(db), make_user(db)
    laptop, phone, theirs = (sign_in(db, settings, u) for u in (user, user, other))
    db.commit()
    assert client.get(f"{API}/profile", headers=_bearer(phone.access_token)).status_code == 200

    ended = client.post("/api/auth/logout-everywhere", headers=_bearer(laptop.access_token))
    assert ended.status_code == 204

    for pair in (laptop, phone):
        assert client.get(f"{API}/profile",
                          headers=_bearer(pair.access_token)).status_code == 401
        assert client.post("/api/auth/refresh",
                           json={"refresh_token": pair.refresh_token}).status_code == 401
    assert client.get(f"{API}/profile", headers=_bearer(theirs.access_token)).status_code == 200
    assert client.post("/api/auth/refresh",
                       json={"refresh_token": theirs.refresh_token}).status_code == 200


def test_sign_out_everywhere_needs_a_sign_in(client):
    refused = client.post("/api/auth/logout-everywhere")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"]


# --- a payment and its receipt ------------------------------------------------------------------


def _paid(db, user, stripe_client) -> Payment:
    """A Starter purchase paid with Stripe's test Visa on localstripe, settled as the
    pipeline settles it (the settlement itself is tested in test_stripe_payments.py)."""
    payment = make_payment(db, user, stripe_client=stripe_client, payment_method="pm_card_visa")
    payment.status, payment.succeeded_at = "succeeded", utc_now()
    db.commit()
    return payment


def test_receipt_says_what_was_bought_for_how_much_and_with_which_card(client, db,
                                                                       stripe_client):
    user = make_user(db, full_name="Ada Lovelace")
    payment = _paid(db, user, stripe_client)

    answer = client.get(f"{API}/payments/{payment.id}/receipt", headers=auth_headers(user))

    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert receipt["number"] == (
        f"{payment.succeeded_at:%Y%m%d}-{payment.id.hex[:12].upper()}")
    assert receipt["description"] == "Starter package: 100 credits"
    assert (receipt["amount_cents"], receipt["net_cents"], receipt["currency"]) == (
        1500, 1500, "USD")
    assert receipt["card"] == {"brand": "visa", "last4": "4242"}
    assert (receipt["billed_to"], receipt["name"]) == (user.email, "Ada Lovelace")
    assert receipt["stripe_receipt_url"] is None  # localstripe has no hosted receipts


def test_receipt_shows_refunds_and_the_net(client, db, stripe_client):
    user = make_user(db)
    payment = _paid(db, user, stripe_client)
    payment.status, payment.refunded_cents, payment.credits_refunded = (
        "partially_refunded", 500, 33)
    db.commit()
    receipt = client.get(f"{API}/payments/{payment.id}/receipt",
                         headers=auth_headers(user)).json()
    assert (receipt["refunded_cents"], receipt["net_cents"], receipt["credits_refunded"]) == (
        500, 1000, 33)


def test_receipt_is_given_without_the_card_when_stripe_cannot_be_reached(db, stripe_client,
                                                                         make_client):
    user = make_user(db)
    payment = _paid(db, user, stripe_client)
    offline = make_client(stripe_api_base=f"http://127.0.0.1:{free_port()}")

    answer = offline.get(f"{API}/payments/{payment.id}/receipt", headers=auth_headers(user))

    assert answer.status_code == 200
    assert answer.json()["card"] is None and answer.json()["amount_cents"] == 1500


def test_only_a_paid_payment_of_ones_own_has_a_receipt(client, db):
    user, other = make_user(db), make_user(db)
    pending = make_payment(db, user)
    theirs = make_payment(db, other)

    not_paid = client.get(f"{API}/payments/{pending.id}/receipt", headers=auth_headers(user))
    assert not_paid.status_code == 409
    assert not_paid.json()["error"]["code"] == "payment_not_paid"
    for payment_id in (theirs.id, uuid.uuid4()):
        for path in (f"{API}/payments/{payment_id}", f"{API}/payments/{payment_id}/receipt"):
            answer = client.get(path, headers=auth_headers(user))
            assert answer.status_code == 404, path
            assert answer.json()["error"]["code"] == "payment_not_found"
            assert str(payment_id) not in answer.text


def test_one_payment_answers_its_status_and_why_it_failed(client, db):
    user = make_user(db)
    payment = make_payment(db, user)
    payment.status, payment.failure_reason = "failed", "Your card was declined."
    db.commit()
    answer = client.get(f"{API}/payments/{payment.id}", headers=auth_headers(user)).json()
    assert (answer["status"], answer["failure_reason"], answer["credits"]) == (
        "failed", "Your card was declined.", 100)


# --- test cards on the local Stripe peer --------------------------------------------------------


def test_the_test_card_route_exists_only_on_a_local_stripe_peer(client, db):
    user = make_user(db)
    payment = make_payment(db, user)
    answer = client.post(f"/api/dev/payments/{payment.id}/pay", json={"card": "visa"},
                         headers=auth_headers(user))
    assert answer.status_code == 404


@pytest.fixture
def peer_client(make_client):
    """The API as `billing dev` runs it against the local peer (the test stack's localstripe)."""
    return make_client(stripe_local_peer=True)


def _start_purchase(peer_client, user) -> str:
    started = peer_client.post(f"{API}/credits/purchase",
                               json={"package_id": "starter", "flow": "payment_intent"},
                               headers=auth_headers(user))
    assert started.status_code == 201, started.text
    return started.json()["payment_id"]


def _balance(db, user) -> int:
    db.expire_all()
    return db.get(User, user.id).credit_balance


@pytest.mark.usefixtures("localstripe_webhooks")
def test_a_test_card_pays_and_the_credits_come_through_the_webhook(peer_client, db,
                                                                   celery_worker):
    user = make_user(db)
    payment_id = _start_purchase(peer_client, user)

    paid = peer_client.post(f"/api/dev/payments/{payment_id}/pay", json={"card": "visa"},
                            headers=auth_headers(user))

    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "pending"  # the route grants nothing itself
    assert _balance(db, user) == 0
    wait_for(lambda: _balance(db, user) == 100, timeout=30, message="credits from the webhook")
    again = peer_client.post(f"/api/dev/payments/{payment_id}/pay", json={"card": "visa"},
                             headers=auth_headers(user))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "payment_not_pending"
    assert _balance(db, user) == 100


@pytest.mark.usefixtures("localstripe_webhooks")
def test_a_declined_test_card_is_a_400_and_the_payment_fails(peer_client, db, celery_worker):
    user = make_user(db)
    payment_id = _start_purchase(peer_client, user)

    declined = peer_client.post(f"/api/dev/payments/{payment_id}/pay",
                                json={"card": "declined"}, headers=auth_headers(user))

    assert declined.status_code == 400
    assert declined.json()["error"]["code"] == "card_declined"
    wait_for(lambda: peer_client.get(f"{API}/payments/{payment_id}", headers=auth_headers(
        user)).json()["status"] == "failed", timeout=30, message="the payment marked failed")
    assert _balance(db, user) == 0


def test_a_test_card_pays_only_ones_own_pending_intent(peer_client, db):
    user, other = make_user(db), make_user(db)
    theirs = make_payment(db, other)
    refused = peer_client.post(f"/api/dev/payments/{theirs.id}/pay", json={"card": "visa"},
                               headers=auth_headers(user))
    assert refused.status_code == 404
    checkout = make_payment(db, user, flow="checkout")
    refused = peer_client.post(f"/api/dev/payments/{checkout.id}/pay", json={"card": "visa"},
                               headers=auth_headers(user))
    assert refused.json()["error"]["code"] == "not_a_payment_intent"
    unknown = peer_client.post(f"/api/dev/payments/{checkout.id}/pay",
                               json={"card": "pm_card_visa"}, headers=auth_headers(user))
    assert unknown.status_code == 422


@pytest.fixture
def env(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_the_local_peer_is_refused_in_production_and_needs_its_url(env):
    env.setenv("BILLING_STRIPE_LOCAL_PEER", "true")
    with pytest.raises(SettingsError, match="BILLING_STRIPE_API_BASE"):
        load_settings()
    env.setenv("BILLING_STRIPE_API_BASE", "http://127.0.0.1:8420")
    assert load_settings().stripe_local_peer is True
    env.setenv("BILLING_ENVIRONMENT", "production")
    env.setenv("BILLING_JWT_SECRET", "p" * 40)
    env.setenv("BILLING_STRIPE_SECRET_KEY", "sk_test_abcdef")
    env.setenv("BILLING_STRIPE_WEBHOOK_SECRET", "whsec_abc")
    with pytest.raises(SettingsError, match="BILLING_STRIPE_LOCAL_PEER"):
        load_settings()


# --- mail in development ------------------------------------------------------------------------

LINK = "http://127.0.0.1:8000/auth/confirm?token=" + "Ab3=_-" * 20


def test_console_mail_prints_the_text_with_its_link_whole(capsys):
    ConsoleMailSender(sender="billing@localhost").send(
        Mail(to="ada@example.com", subject="Confirm your email address",
             body=f"Open this link:\n\n{LINK}\n"))
    printed = capsys.readouterr().out
    assert LINK in printed.splitlines()
    assert "=3D" not in printed and "Content-Transfer-Encoding" not in printed
    assert "To: ada@example.com" in printed and "Subject: Confirm your email address" in printed


def test_file_mail_keeps_the_mime_message(tmp_path):
    FileMailSender(sender="billing@localhost", directory=tmp_path).send(
        Mail(to="ada@example.com", subject="Confirm", body=f"Open this link:\n\n{LINK}\n"))
    raw = next(tmp_path.glob("*.eml")).read_bytes()
    assert b"Content-Transfer-Encoding" in raw and LINK.encode() not in raw  # wrapped, encoded
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert LINK in message.get_content()
