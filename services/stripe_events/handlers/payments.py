"""Checkout Session and PaymentIntent events: settle a purchase, or record why it did not."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Payment
from services.payments import settlement
from services.payments.stripe_objects import (
    Skip,
    StripeObject,
    as_int,
    as_uuid,
    currency,
    metadata,
    ref,
)
from services.stripe_events.context import Event, Handler


def _not_subscription(payment: Payment) -> None:
    # Checked before anything is written: a skipped event must leave no change behind.
    if payment.flow == "subscription":
        raise Skip("subscription payments are granted by their invoice events")


def _session_payment(session: Session, obj: StripeObject) -> Payment:
    if obj.get("mode") not in (None, "payment"):
        raise Skip("subscription checkouts are settled by subscription and invoice events")
    meta = metadata(obj)
    payment = settlement.find_payment(
        session,
        payment_id=as_uuid(meta.get("payment_id")) or as_uuid(obj.get("client_reference_id")),
        checkout_session_id=ref(obj.get("id")),
        payment_intent_id=ref(obj.get("payment_intent")),
    )
    if payment is None:
        raise Skip(f"checkout session {ref(obj.get('id'))} is not one of our payments")
    _not_subscription(payment)
    settlement.check_customer(session, payment, customer=ref(obj.get("customer")))
    settlement.link(
        payment,
        checkout_session_id=ref(obj.get("id")),
        payment_intent_id=ref(obj.get("payment_intent")),
    )
    return payment


def _intent_payment(session: Session, obj: StripeObject) -> Payment:
    payment = settlement.find_payment(
        session,
        payment_id=as_uuid(metadata(obj).get("payment_id")),
        payment_intent_id=ref(obj.get("id")),
    )
    if payment is None:
        raise Skip(f"payment intent {ref(obj.get('id'))} is not one of our payments")
    _not_subscription(payment)
    settlement.check_customer(session, payment, customer=ref(obj.get("customer")))
    settlement.link(
        payment, payment_intent_id=ref(obj.get("id")), charge_id=ref(obj.get("latest_charge"))
    )
    return payment


def session_completed(session: Session, event: Event) -> None:
    """A Checkout Session finished: paid now (cards) or later (async payment methods)."""
    obj = event.object
    payment = _session_payment(session, obj)
    if obj.get("payment_status") in ("paid", "no_payment_required"):
        settlement.settle(
            session, payment, amount_cents=as_int(obj.get("amount_total")), currency=currency(obj)
        )


def session_async_succeeded(session: Session, event: Event) -> None:
    """A delayed payment method (bank debit) of a Checkout Session cleared."""
    obj = event.object
    payment = _session_payment(session, obj)
    settlement.settle(
        session, payment, amount_cents=as_int(obj.get("amount_total")), currency=currency(obj)
    )


def session_async_failed(session: Session, event: Event) -> None:
    """A delayed payment method of a Checkout Session failed."""
    settlement.fail(
        session, _session_payment(session, event.object), reason="the payment did not clear"
    )


def session_expired(session: Session, event: Event) -> None:
    """The Checkout Session lapsed unpaid."""
    settlement.expire(session, _session_payment(session, event.object))


def intent_succeeded(session: Session, event: Event) -> None:
    """The PaymentIntent collected the money."""
    obj = event.object
    payment = _intent_payment(session, obj)
    received = as_int(obj.get("amount_received"))
    settlement.settle(
        session,
        payment,
        amount_cents=received if received is not None else as_int(obj.get("amount")),
        currency=currency(obj),
    )


def intent_failed(session: Session, event: Event) -> None:
    """A payment attempt failed (the customer may still retry with another card)."""
    obj = event.object
    error = obj.get("last_payment_error")
    reason = None
    if isinstance(error, dict):
        reason = error.get("message") or error.get("code")
    settlement.fail(session, _intent_payment(session, obj), reason=str(reason) if reason else None)


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": session_completed,
    "checkout.session.async_payment_succeeded": session_async_succeeded,
    "checkout.session.async_payment_failed": session_async_failed,
    "checkout.session.expired": session_expired,
    "payment_intent.succeeded": intent_succeeded,
    "payment_intent.payment_failed": intent_failed,
}
