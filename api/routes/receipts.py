"""One payment of the signed-in user, and its receipt."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.schemas.credits import CardOut, PaymentOut, ReceiptOut
from services.payments import receipts

router = APIRouter(prefix="/api/user-management", tags=["credits"])


@router.get("/payments/{payment_id}", response_model=PaymentOut, summary="One payment",
            responses={404: {"description": "payment_not_found"}})
def get_payment(payment_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> PaymentOut:
    """One of the user's payments, with its status (and why it failed, if it did)."""
    payment = receipts.own_payment(session, user_id=user.id, payment_id=payment_id)
    return PaymentOut.model_validate(payment)


@router.get("/payments/{payment_id}/receipt", response_model=ReceiptOut,
            summary="The receipt of a paid payment", responses={
                404: {"description": "payment_not_found"},
                409: {"description": "payment_not_paid: pending, failed or expired"}})
def get_receipt(
    payment_id: uuid.UUID, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> ReceiptOut:
    """What was bought, for how much, when and how it was paid, and what was refunded."""
    r = receipts.receipt(session, settings, user_id=user.id, payment_id=payment_id)
    p = r.payment
    assert p.succeeded_at is not None
    return ReceiptOut(
        number=r.number, payment_id=p.id, status=p.status, paid_at=p.succeeded_at,
        description=r.description, credits=p.credits, credits_refunded=p.credits_refunded,
        amount_cents=p.amount_cents, refunded_cents=p.refunded_cents,
        net_cents=p.amount_cents - p.refunded_cents, currency=p.currency,
        billed_to=r.billed_to, name=r.name,
        card=CardOut(brand=r.card.brand, last4=r.card.last4) if r.card else None,
        stripe_receipt_url=r.stripe_receipt_url,
    )
