"""Starting a credit purchase through Stripe, and the user's payment history.

A purchase never grants credits: it creates the Stripe objects and a ``pending``
payment; the Stripe event pipeline grants the credits once Stripe confirms.

Ordering: Stripe is called first and the ``payments`` row is written after, in
the request's transaction. If Stripe is down nothing is written (503); if the
transaction fails after Stripe answered, the Stripe object is left without a
payment row and can never be paid through us (its id was never returned), and
its events carry a ``payment_id`` that matches nothing. Stripe idempotency
keys derive from the user id (customer, ``stripe_gateway.customer_of``) and the
payment id (session or intent), so the SDK's network retries never create a
second object.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from db.models import CreditPackage, Payment, User
from services.credits import packages
from services.errors import InvalidInput
from services.pagination import Page, newest_first
from services.payments import stripe_gateway
from settings import Settings

FLOWS = ("checkout", "payment_intent")


@dataclass(frozen=True)
class PurchaseStarted:
    """What the client needs to pay: a Checkout URL or a PaymentIntent client secret."""

    payment: Payment
    checkout_url: str | None = None
    session_id: str | None = None
    client_secret: str | None = None


def redirect_urls(
    settings: Settings, *, success_url: str | None = None, cancel_url: str | None = None
) -> tuple[str, str]:
    """Checkout's success and cancel URLs: the client's if on an allowed host, else the defaults.

    Allowed hosts are those of ``PUBLIC_BASE_URL`` and of the configured checkout URLs, so a
    purchase can never send a user's browser to someone else's site (an open redirect).
    """
    base = str(settings.public_base_url).rstrip("/")
    default_success = (
        str(settings.checkout_success_url)
        if settings.checkout_success_url
        else f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}"
    )
    default_cancel = (
        str(settings.checkout_cancel_url)
        if settings.checkout_cancel_url
        else f"{base}/billing/cancel"
    )
    allowed = {_origin(base), _origin(default_success), _origin(default_cancel)}
    for name, value in (("success_url", success_url), ("cancel_url", cancel_url)):
        if value is not None and _origin(value) not in allowed:
            raise InvalidInput(
                f"{name} must be on {', '.join(sorted(allowed))}",
                code="redirect_not_allowed",
                field=name,
            )
    return success_url or default_success, cancel_url or default_cancel


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def start_purchase(
    session: Session,
    settings: Settings,
    *,
    user: User,
    package_id: str,
    flow: str = "checkout",
    success_url: str | None = None,
    cancel_url: str | None = None,
) -> PurchaseStarted:
    """Create the Stripe objects for buying ``package_id`` and a ``pending`` payment."""
    if flow not in FLOWS:
        raise InvalidInput(f"flow must be one of {', '.join(FLOWS)}", code="invalid_flow")
    package = packages.purchasable(session, package_id)
    if flow == "checkout":
        success_url, cancel_url = redirect_urls(
            settings, success_url=success_url, cancel_url=cancel_url
        )
    client = stripe_gateway.client(settings)
    payment_id = uuid.uuid4()
    metadata = {"payment_id": str(payment_id), "user_id": str(user.id), "package_id": package.id}
    with stripe_gateway.errors():
        customer_id = stripe_gateway.customer_of(session, client, user)
        if flow == "checkout":
            assert success_url is not None and cancel_url is not None
            checkout = client.v1.checkout.sessions.create(
                params=_checkout_params(
                    package, customer_id, metadata, success_url=success_url, cancel_url=cancel_url
                ),  # type: ignore[arg-type]
                options={"idempotency_key": f"billing-checkout-{payment_id}"},
            )
        else:
            intent_params: dict[str, Any] = {
                "amount": package.price_cents,
                "currency": package.currency.lower(),
                "customer": customer_id,
                "metadata": metadata,
                "payment_method_types": ["card"],
            }
            intent = client.v1.payment_intents.create(
                params=intent_params,  # type: ignore[arg-type]
                options={"idempotency_key": f"billing-intent-{payment_id}"},
            )
    payment = Payment(
        id=payment_id,
        user_id=user.id,
        package_id=package.id,
        flow=flow,
        status="pending",
        amount_cents=package.price_cents,
        currency=package.currency,
        credits=package.credits,
    )
    if flow == "checkout":
        payment.stripe_checkout_session_id = checkout.id
        session.add(payment)
        session.flush()
        return PurchaseStarted(payment=payment, checkout_url=checkout.url, session_id=checkout.id)
    payment.stripe_payment_intent_id = intent.id
    session.add(payment)
    session.flush()
    return PurchaseStarted(payment=payment, client_secret=intent.client_secret)


def _checkout_params(
    package: CreditPackage,
    customer_id: str,
    metadata: dict[str, str],
    *,
    success_url: str,
    cancel_url: str,
) -> dict[str, Any]:
    return {
        "mode": "payment",
        "customer": customer_id,
        "client_reference_id": metadata["payment_id"],
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": package.currency.lower(),
                    "unit_amount": package.price_cents,
                    "product_data": {"name": f"{package.name} ({package.credits} credits)"},
                },
            }
        ],
        "metadata": metadata,
        # The PaymentIntent's own events must also say what they pay for.
        "payment_intent_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }


# --- history ----------------------------------------------------------------------------------


def list_payments(
    session: Session, *, user_id: uuid.UUID | None = None, status: str | None = None,
    since: datetime | None = None, until: datetime | None = None, limit: int = 50,
    cursor: str | None = None,
) -> Page[Payment]:
    """Payments newest first, of one user or all (admins), by status and creation time."""
    return newest_first(session, Payment, equal={Payment.user_id: user_id, Payment.status: status},
                        since=since, until=until, limit=limit, cursor=cursor)
