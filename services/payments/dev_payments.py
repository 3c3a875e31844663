"""Paying a purchase with a Stripe test card, against the local Stripe peer (development).

With real Stripe the browser confirms a PaymentIntent itself (Stripe.js), and the card
never reaches our server. The local peer (localstripe) has no hosted page to type a card
into, and its JavaScript shim only completes 3-D Secure on an intent confirmed already. So
in development the portal asks the server to do what Stripe.js would: attach a test
payment method to the purchase's PaymentIntent, then confirm it. The credits still arrive
only through the peer's signed webhook and the event pipeline, as they would from Stripe.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from db.models import Payment
from services.errors import Conflict, InvalidInput
from services.payments import receipts, stripe_gateway
from settings import Settings

# Stripe's test payment methods, which localstripe knows too.
CARDS = {
    "visa": "pm_card_visa",  # succeeds
    "declined": "pm_card_chargeCustomerFail",  # declined when charged
}


def pay(
    session: Session, settings: Settings, *, user_id: uuid.UUID, payment_id: uuid.UUID,
    card: str,
) -> Payment:
    """Confirm the pending purchase ``payment_id`` with the test card ``card``."""
    payment = receipts.own_payment(session, user_id=user_id, payment_id=payment_id)
    intent = payment.stripe_payment_intent_id
    if payment.flow != "payment_intent" or intent is None:
        raise InvalidInput("this purchase is paid through Checkout, not with a card here",
                           code="not_a_payment_intent")
    if payment.status != "pending":
        raise Conflict("this purchase is not waiting for a payment", code="payment_not_pending")
    client = stripe_gateway.client(settings)
    with stripe_gateway.errors():
        # The peer cannot take the payment method in the confirm call itself (NOTES.md).
        client.v1.payment_intents.update(intent, params={"payment_method": CARDS[card]})
        client.v1.payment_intents.confirm(intent)
    return payment
