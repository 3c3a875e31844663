"""A user's own payment, and its receipt.

A receipt is written from two sources. Our ``payments`` row holds what was bought and what
it cost: the package or plan, the credits, the amount and currency, when it was paid, what
was refunded since. Stripe's charge holds how it was paid (the card's brand and last four
digits) and, on real Stripe, a hosted receipt page (``receipt_url``). Stripe is asked when
the receipt is opened; if it cannot answer, the receipt is given without those two.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import CreditPackage, Payment, Plan, User
from services.errors import Conflict, NotFound
from services.payments import stripe_gateway
from settings import Settings

log = logging.getLogger(__name__)

# A payment that took money: it has a receipt, whatever was refunded since.
PAID = ("succeeded", "partially_refunded", "refunded")


@dataclass(frozen=True)
class Card:
    brand: str
    last4: str


@dataclass(frozen=True)
class Receipt:
    payment: Payment
    number: str
    description: str
    billed_to: str | None
    name: str | None
    card: Card | None
    stripe_receipt_url: str | None


def own_payment(session: Session, *, user_id: uuid.UUID, payment_id: uuid.UUID) -> Payment:
    """The payment ``payment_id`` of ``user_id``; ``NotFound`` for anyone else's."""
    payment = session.scalar(
        select(Payment).where(Payment.id == payment_id, Payment.user_id == user_id)
    )
    if payment is None:
        raise NotFound("no such payment", code="payment_not_found")
    return payment


def receipt(
    session: Session, settings: Settings, *, user_id: uuid.UUID, payment_id: uuid.UUID
) -> Receipt:
    """The receipt of a paid payment; ``Conflict`` (``payment_not_paid``) before it is paid."""
    payment = own_payment(session, user_id=user_id, payment_id=payment_id)
    if payment.status not in PAID or payment.succeeded_at is None:
        raise Conflict("this payment has not been paid, so it has no receipt",
                       code="payment_not_paid")
    user = session.get(User, user_id)
    assert user is not None
    card, receipt_url = _from_stripe(settings, payment.stripe_charge_id)
    return Receipt(
        payment=payment,
        # Unique enough to quote (48 bits of the payment id), and dated like a receipt is.
        number=f"{payment.succeeded_at:%Y%m%d}-{payment.id.hex[:12].upper()}",
        description=_description(session, payment),
        billed_to=user.email or user.phone,
        name=user.full_name,
        card=card,
        stripe_receipt_url=receipt_url,
    )


def _description(session: Session, payment: Payment) -> str:
    if payment.package_id is not None:
        package = session.get(CreditPackage, payment.package_id)
        name = package.name if package is not None else payment.package_id
        return f"{name} package: {payment.credits} credits"
    if payment.plan_id is not None:
        plan = session.get(Plan, payment.plan_id)
        name = plan.name if plan is not None else "Subscription"
        return f"{name} subscription: {payment.credits} credits"
    return f"{payment.credits} credits"


def _from_stripe(settings: Settings, charge_id: str | None) -> tuple[Card | None, str | None]:
    """The card that paid ``charge_id`` and Stripe's receipt page, as far as Stripe answers."""
    if charge_id is None:
        return None, None
    client = stripe_gateway.client(settings)
    try:
        charge = client.v1.charges.retrieve(charge_id).to_dict()
        card = _card(charge.get("payment_method_details"))
        method = charge.get("payment_method")
        if card is None and isinstance(method, str) and method.startswith("pm_"):
            # Stripe's charges carry the card's details; localstripe's only name the method.
            card = _card(client.v1.payment_methods.retrieve(method).to_dict())
    except stripe.StripeError as exc:
        log.warning("stripe details of a receipt unavailable", extra={"error": type(exc).__name__})
        return None, None
    url = charge.get("receipt_url")
    return card, url if isinstance(url, str) and url.startswith("https://") else None


def _card(holder: dict[str, Any] | None) -> Card | None:
    details = holder.get("card") if holder else None
    if not details or not details.get("last4"):
        return None
    return Card(brand=str(details.get("brand") or "card"), last4=str(details["last4"]))
