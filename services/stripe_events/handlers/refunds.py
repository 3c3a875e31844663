"""Refund events: take back the refunded share of a payment's credits.

Stripe's cumulative ``amount_refunded`` of the charge is the measure: ``charge.refunded``
carries it; a ``refund.*`` event carries one refund, so the charge is read from Stripe.
Any order and any number of deliveries end in the same state.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

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


def _apply(session: Session, charge: StripeObject) -> None:
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
    settlement.record_refund(
        session, payment, refunded_cents=as_int(charge.get("amount_refunded")) or 0
    )


def charge_refunded(session: Session, event: Event) -> None:
    """A charge was (partly) refunded: its ``amount_refunded`` is the running total."""
    _apply(session, event.object)


def refund_changed(session: Session, event: Event) -> None:
    """A refund was created or changed: re-read its charge for the running total."""
    charge_id = ref(event.object.get("charge"))
    if charge_id is None:
        raise Skip("refund without a charge")
    charge = stripe_gateway.client(event.settings).v1.charges.retrieve(charge_id)
    _apply(session, charge.to_dict(for_json=True))


HANDLERS: dict[str, Handler] = {
    "charge.refunded": charge_refunded,
    "refund.created": refund_changed,
    "refund.updated": refund_changed,
    "charge.refund.updated": refund_changed,
}
