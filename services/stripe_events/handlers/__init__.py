"""Handlers by event type; a type missing here is stored and marked ``ignored``."""

from __future__ import annotations

from services.stripe_events.context import Handler
from services.stripe_events.handlers import (
    disputes,
    payment_methods,
    payments,
    refunds,
    subscriptions,
)

HANDLERS: dict[str, Handler] = {
    **payments.HANDLERS,
    **refunds.HANDLERS,
    **disputes.HANDLERS,
    **subscriptions.HANDLERS,
    **payment_methods.HANDLERS,
}

__all__ = ["HANDLERS"]
