"""What the seller's systems (and auto top-up) hear of changes of money and subscriptions.

Called by the Stripe event handlers in the event's own transaction, only when the event
changed something, so each cause emits its webhook event exactly once however often Stripe
delivers it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Payment, Subscription
from services.topup import attempts
from services.webhooks import events
from settings import Settings


def payment_succeeded(session: Session, payment: Payment, *, topup: bool = False) -> None:
    """A payment was granted its credits (``topup``: Stripe's metadata names a top-up)."""
    events.emit(session, "payment.succeeded", events.payment_data(payment),
                user_id=payment.user_id)
    if topup:
        attempts.payment_settled(session, payment)


def payment_failed(session: Session, settings: Settings, payment: Payment, *,
                   code: str | None = None, topup: bool = False) -> None:
    """A payment was marked failed (``topup``: Stripe's metadata names a top-up)."""
    events.emit(session, "payment.failed", events.payment_data(payment),
                user_id=payment.user_id)
    if topup:
        attempts.payment_failed(session, payment, code=code, message=payment.failure_reason,
                                max_failures=settings.topup_max_failures)


def payment_refunded(session: Session, payment: Payment) -> None:
    """More of a payment was refunded (its running totals are in the event)."""
    events.emit(session, "payment.refunded", events.payment_data(payment), user_id=payment.user_id)


SUBSCRIPTION_EVENTS = {
    "customer.subscription.created": "subscription.created",
    "customer.subscription.updated": "subscription.updated",
    "customer.subscription.deleted": "subscription.canceled",
}


def subscription_changed(session: Session, row: Subscription, *, stripe_type: str) -> None:
    """A subscription's state was applied from a Stripe event."""
    event_type = SUBSCRIPTION_EVENTS[stripe_type]
    if event_type == "subscription.updated" and row.status == "canceled":
        event_type = "subscription.canceled"
    events.emit(session, event_type, {
        "subscription_id": str(row.id), "user_id": str(row.user_id),
        "plan_id": str(row.plan_id), "status": row.status,
        "stripe_subscription_id": row.stripe_subscription_id,
        "current_period_end": row.current_period_end.isoformat()
        if row.current_period_end else None,
        "cancel_at_period_end": row.cancel_at_period_end,
    }, user_id=row.user_id)
