"""Emitting outgoing webhook events: a transactional outbox.

``emit`` writes the event and one delivery per subscribed endpoint in the caller's
transaction (the change that caused the event), and hands the deliveries to the workers
once it commits: an event exists if and only if its cause committed. A delivery lost on
the way (broker down, worker killed) is found again by the sweep.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import Payment, WebhookEvent
from services import task_queue

EVENT_TYPES = (
    "credits.granted",
    "credits.low",
    "credits.depleted",
    "credits.expired",
    "payment.succeeded",
    "payment.failed",
    "payment.refunded",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "topup.succeeded",
    "topup.failed",
)
ALL = "*"
DELIVER_TASK = "webhooks.deliver"

_FAN_OUT = text(
    """
    INSERT INTO webhook_deliveries (endpoint_id, event_id)
    SELECT id, :event_id FROM webhook_endpoints
    WHERE enabled AND deleted_at IS NULL AND (:type = ANY(events) OR '*' = ANY(events))
    RETURNING id
    """
)


def new_event_id() -> str:
    """A fresh event id (``evt_`` and 24 hex digits)."""
    return "evt_" + secrets.token_hex(12)


def emit(session: Session, event_type: str, data: dict[str, Any], *,
         user_id: uuid.UUID | None = None) -> str:
    """Record event ``event_type`` with ``data`` in this transaction; its id."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    event_id = new_event_id()
    payload = {"id": event_id, "type": event_type, "created": int(time.time()), "data": data}
    session.add(WebhookEvent(id=event_id, type=event_type, user_id=user_id, payload=payload))
    session.flush()
    for delivery_id in session.scalars(_FAN_OUT, {"event_id": event_id, "type": event_type}):
        task_queue.enqueue(session, DELIVER_TASK, delivery_id)
    return event_id


def payment_data(payment: Payment) -> dict[str, Any]:
    """The ``data`` of a ``payment.*`` event."""
    return {
        "payment_id": str(payment.id), "user_id": str(payment.user_id),
        "status": payment.status, "flow": payment.flow, "package_id": payment.package_id,
        "amount_cents": payment.amount_cents, "currency": payment.currency,
        "credits": payment.credits, "refunded_cents": payment.refunded_cents,
        "credits_refunded": payment.credits_refunded,
        "failure_reason": payment.failure_reason,
    }
