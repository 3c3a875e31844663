"""Emitting outgoing webhook events: a transactional outbox.

``emit`` writes the event and one delivery per subscribed endpoint in the caller's
transaction (the change that caused the event), and hands the deliveries to the workers
once it commits: an event exists if and only if its cause committed. A delivery lost on
the way (broker down, worker killed) is found again by the sweep.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import Payment
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

# One round trip: the event and a delivery per subscribed endpoint, nothing when no endpoint
# wants the type.
_EMIT = text(
    """
    WITH targets AS (
        SELECT id FROM webhook_endpoints
        WHERE enabled AND deleted_at IS NULL AND (:type = ANY(events) OR '*' = ANY(events))
    ), event AS (
        INSERT INTO webhook_events (id, type, user_id, payload)
        SELECT :event_id, :type, :user_id, CAST(:payload AS jsonb)
        WHERE EXISTS (SELECT 1 FROM targets)
        RETURNING id
    )
    INSERT INTO webhook_deliveries (endpoint_id, event_id)
    SELECT targets.id, event.id FROM targets, event
    RETURNING id
    """
)


def new_event_id() -> str:
    """A fresh event id (``evt_`` and 24 hex digits)."""
    return "evt_" + secrets.token_hex(12)


def emit(session: Session, event_type: str, data: dict[str, Any], *,
         user_id: uuid.UUID | None = None) -> str:
    """Record event ``event_type`` with ``data`` in this transaction (for the endpoints that
    want it; nothing is stored when none does); its id."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    event_id = new_event_id()
    payload = {"id": event_id, "type": event_type, "created": int(time.time()), "data": data}
    rows = session.scalars(_EMIT, {"event_id": event_id, "type": event_type, "user_id": user_id,
                                   "payload": json.dumps(payload, default=str)})
    for delivery_id in rows:
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
