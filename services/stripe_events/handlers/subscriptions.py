"""Subscription and invoice events: keep ``subscriptions`` in step, grant each paid invoice."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.payments import subscriptions
from services.payments.stripe_objects import StripeInvoice, StripeSubscription
from services.stripe_events.context import Event, Handler


def subscription_changed(session: Session, event: Event) -> None:
    """A subscription was created or updated: apply its state unless a newer one is known."""
    subscriptions.apply_event_state(
        session, StripeSubscription.parse(event.object), event_created=event.created
    )


def subscription_deleted(session: Session, event: Event) -> None:
    """A subscription ended."""
    subscriptions.apply_event_state(
        session, StripeSubscription.parse(event.object), event_created=event.created,
        deleted=True,
    )


def invoice_paid(session: Session, event: Event) -> None:
    """A subscription invoice was paid: grant the plan's monthly credits (once per invoice)."""
    subscriptions.grant_invoice(session, StripeInvoice.parse(event.object))


def invoice_failed(session: Session, event: Event) -> None:
    """A renewal failed: the subscription is past due."""
    subscriptions.invoice_failed(
        session, StripeInvoice.parse(event.object), event_created=event.created
    )


HANDLERS: dict[str, Handler] = {
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_deleted,
    "invoice.paid": invoice_paid,
    "invoice.payment_succeeded": invoice_paid,
    "invoice.payment_failed": invoice_failed,
}
