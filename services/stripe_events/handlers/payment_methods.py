"""Saved payment method events: keep our copy of a customer's methods in step."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.payments import payment_methods
from services.stripe_events.context import Event, Handler


def attached(session: Session, event: Event) -> None:
    """A payment method was attached to a customer (saved)."""
    payment_methods.apply_attached(session, event.object, event_created=event.created)


def detached(session: Session, event: Event) -> None:
    """A payment method was detached (removed)."""
    payment_methods.apply_detached(session, event.object, event_created=event.created)


def setup_succeeded(session: Session, event: Event) -> None:
    """A SetupIntent saved a payment method for off-session use."""
    payment_methods.apply_setup_succeeded(session, event.settings, event.object,
                                          event_created=event.created)


HANDLERS: dict[str, Handler] = {
    "payment_method.attached": attached,
    "payment_method.detached": detached,
    "setup_intent.succeeded": setup_succeeded,
}
