"""Refund events: take back the refunded share of a payment's credits.

Stripe's cumulative ``amount_refunded`` of the charge is the measure: ``charge.refunded``
carries it; a ``refund.*`` event carries one refund, so the charge is read from Stripe.
Any order and any number of deliveries end in the same state.

A refund that fails or is canceled (``refund.updated`` / ``charge.refund.updated`` with
status ``failed`` or ``canceled``) gives back what it took, once (``refund_reversal``);
one that ends before it was counted is recorded as ended, and its late ``refund.*`` events
are ignored (``stripe_refunds``, migration 0010).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Payment
from services.payments import settlement, stripe_gateway, subscriptions
from services.payments.stripe_objects import (
    NotReady,
    Skip,
    StripeObject,
    as_int,
    as_uuid,
    metadata,
    ref,
)
from services.stripe_events.context import Event, Handler
from services.webhooks import announce


def _apply(
    session: Session, charge: StripeObject, *, refund: StripeObject | None = None
) -> None:
    payment = settlement.find_payment(
        session,
        payment_id=as_uuid(metadata(charge).get("payment_id")),
        payment_intent_id=ref(charge.get("payment_intent")),
        charge_id=ref(charge.get("id")),
    )
    if payment is None:
        if subscriptions.user_of_customer(session, ref(charge.get("customer"))) is not None:
            # Ours, but its payment is not recorded yet: a subscription invoice's payment is
            # written by its ``invoice.paid``, which may come after this refund.
            raise NotReady(f"charge {ref(charge.get('id'))} of our customer has no payment yet")
        raise Skip(f"charge {ref(charge.get('id'))} is not one of our payments")
    settlement.link(
        payment,
        payment_intent_id=ref(charge.get("payment_intent")),
        charge_id=ref(charge.get("id")),
    )
    before = payment.refunded_cents
    refunded = as_int(charge.get("amount_refunded")) or 0
    for listed in _listed_refunds(charge):
        refunded -= _settle_listed(session, payment, listed)
    settlement.record_refund(session, payment, refunded_cents=refunded)
    if refund is not None:
        settlement.note_refund(session, payment, refund_id=str(refund["id"]),
                               amount_cents=as_int(refund.get("amount")) or 0)
    if payment.refunded_cents > before:
        announce.payment_refunded(session, payment)


def _listed_refunds(charge: StripeObject) -> list[StripeObject]:
    """The charge's refunds when it carries all of them (older API versions, or expanded)."""
    refunds = charge.get("refunds")
    if not isinstance(refunds, dict) or refunds.get("has_more"):
        return []
    return [r for r in refunds.get("data") or [] if isinstance(r, dict) and r.get("id")]


def _settle_listed(session: Session, payment: Payment, refund: StripeObject) -> int:
    """Note or end one refund the charge lists; the cents to leave out of its stale total (a
    refund known to have ended, still counted in this older snapshot)."""
    refund_id, amount = str(refund["id"]), as_int(refund.get("amount")) or 0
    status = str(refund.get("status") or "")
    if status in settlement.REFUND_ENDED:
        settlement.end_refund(session, payment, refund_id=refund_id, amount_cents=amount,
                              status=status)
        return 0  # Stripe's total already leaves it out
    if settlement.refund_ended(session, refund_id):
        return amount
    settlement.note_refund(session, payment, refund_id=refund_id, amount_cents=amount)
    return 0


def charge_refunded(session: Session, event: Event) -> None:
    """A charge was (partly) refunded: its ``amount_refunded`` is the running total."""
    _apply(session, event.object)


def refund_changed(session: Session, event: Event) -> None:
    """A refund was created or changed: re-read its charge for the running total; a failed
    or canceled one gives back what it took."""
    refund = event.object
    refund_id = ref(refund.get("id"))
    charge_id = ref(refund.get("charge"))
    if charge_id is None or refund_id is None:
        raise Skip("refund without a charge")
    status = str(refund.get("status") or "")
    if status in settlement.REFUND_ENDED:
        _end(session, refund, refund_id=refund_id, charge_id=charge_id, status=status)
        return
    if settlement.refund_ended(session, refund_id):
        raise Skip(f"refund {refund_id} has failed or was canceled: it never counts again")
    charge = stripe_gateway.client(event.settings).v1.charges.retrieve(charge_id)
    _apply(session, charge.to_dict(for_json=True), refund=refund)


def _end(
    session: Session, refund: StripeObject, *, refund_id: str, charge_id: str, status: str
) -> None:
    payment = settlement.find_payment(
        session, payment_intent_id=ref(refund.get("payment_intent")), charge_id=charge_id
    )
    if payment is None:
        raise Skip(f"refund {refund_id} is not of one of our payments")
    settlement.end_refund(session, payment, refund_id=refund_id,
                          amount_cents=as_int(refund.get("amount")) or 0, status=status)


HANDLERS: dict[str, Handler] = {
    "charge.refunded": charge_refunded,
    "refund.created": refund_changed,
    "refund.updated": refund_changed,
    "charge.refund.updated": refund_changed,
}
