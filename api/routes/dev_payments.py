"""Development only: pay a purchase with a Stripe test card on the local Stripe peer.

Mounted only when ``BILLING_STRIPE_LOCAL_PEER`` is on (``billing dev`` sets it when it starts
the peer; refused in production). See ``services/payments/dev_payments.py`` for why this exists.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.schemas.credits import PaymentOut, TestCardIn
from services.payments import dev_payments

router = APIRouter(prefix="/api/dev", tags=["development"])


@router.post("/payments/{payment_id}/pay", response_model=PaymentOut,
             summary="Pay a purchase with a test card (local Stripe peer only)", responses={
                 400: {"description": "card_declined, or not_a_payment_intent"},
                 404: {"description": "payment_not_found"},
                 409: {"description": "payment_not_pending"},
                 503: {"description": "the Stripe peer cannot be reached"}})
def pay_with_test_card(
    payment_id: uuid.UUID, body: TestCardIn, user: CurrentUser, session: SessionDep,
    settings: SettingsDep,
) -> PaymentOut:
    """Confirm the purchase's PaymentIntent with a test card, as Stripe.js would; the
    credits arrive later, through the peer's webhook and the event pipeline."""
    payment = dev_payments.pay(session, settings, user_id=user.id, payment_id=payment_id,
                             card=body.card)
    return PaymentOut.model_validate(payment)
