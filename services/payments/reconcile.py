"""Nothing dropped: re-enqueue events left pending, and fetch events the webhook never got.

The sweep covers an enqueue that failed (broker down when the webhook answered), a task
lost with its worker, or a retry chain that died; processing is idempotent, so a sweep
racing a slow worker costs a no-op. Reconciliation lists Stripe's recent events through
the API and stores the ones missing from the inbox, exactly as the webhook would have.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import StripeEvent
from services import task_queue
from services.errors import InvalidInput
from services.payments import stripe_gateway
from services.stripe_events.inbox import PROCESS_TASK, check, store_many
from settings import Settings

log = logging.getLogger(__name__)

_PAGE = 100


def sweep(session: Session, *, older_than_s: float, limit: int = 1000) -> int:
    """Enqueue pending events untouched for ``older_than_s`` seconds; returns how many."""
    cutoff = utc_now() - timedelta(seconds=older_than_s)
    ids = list(
        session.scalars(
            select(StripeEvent.id)
            .where(
                StripeEvent.status == "pending",
                StripeEvent.received_at < cutoff,
                StripeEvent.updated_at < cutoff,
            )
            .order_by(StripeEvent.received_at)
            .limit(limit)
        )
    )
    for event_id in ids:
        task_queue.enqueue(session, PROCESS_TASK, event_id)
    if ids:
        log.info("stripe sweep re-enqueued events", extra={"count": len(ids)})
    return len(ids)


def reconcile(session: Session, settings: Settings, *, window_s: int) -> int:
    """Store (and enqueue) Stripe events of the last ``window_s`` seconds we never received."""
    client = stripe_gateway.client(settings)
    since = int(time.time()) - window_s
    listing = client.v1.events.list(params={"created": {"gte": since}, "limit": _PAGE})
    found: list[str] = []
    batch: list[dict[str, Any]] = []
    for item in listing.auto_paging_iter():
        try:
            batch.append(check(item.to_dict(for_json=True)))
        except InvalidInput:
            log.warning("stripe listed an event we cannot read", extra={"event_id": item.id})
        if len(batch) >= _PAGE:
            found += store_many(session, batch)
            batch = []
    if batch:
        found += store_many(session, batch)
    if found:
        log.info("stripe reconciliation found missed events", extra={"count": len(found)})
    return len(found)

