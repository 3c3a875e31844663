"""Delivering outgoing webhooks: claim, send signed, record; backoff, sweep, redelivery, log.

A delivery is claimed with a lease (``attempts`` counted, ``leased_until`` set) in a short
transaction of its own, sent outside any transaction, and its outcome recorded in another.
A worker killed mid-send leaves the lease to run out; the sweep then sends it again (the
receiver may see the event twice, always with the same event id). Failures back off from
``webhook_retry_base_s``, doubling, for ``webhook_retry_window_s`` (three days); then the
delivery fails, its endpoint is disabled and the admins are told. A receiver answering
410 Gone disables its endpoint at once.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import WebhookDelivery, WebhookEndpoint
from services import task_queue
from services.errors import Conflict, NotFound
from services.pagination import Page, paginate
from services.webhooks import signing, transport
from services.webhooks.events import DELIVER_TASK
from settings import Settings

log = logging.getLogger(__name__)
NOTIFY_TASK = "notices.send"

_CLAIM = text(
    """
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1,
        leased_until = now() + make_interval(secs => :lease_s)
    FROM webhook_endpoints e, webhook_events ev
    WHERE d.id = :id AND d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.leased_until IS NULL OR d.leased_until < now())
      AND e.id = d.endpoint_id AND ev.id = d.event_id
    RETURNING d.attempts, d.created_at, e.id AS endpoint_id, e.url, e.secret,
              e.enabled AND e.deleted_at IS NULL AS live, ev.payload
    """
)
# The common outcome in one statement: no row lock taken first, no ORM load.
_SUCCEEDED = text(
    """
    UPDATE webhook_deliveries
    SET status = 'succeeded', delivered_at = now(), last_status_code = :status_code,
        last_error = NULL, leased_until = NULL
    WHERE id = :id AND status = 'pending'
    """
)
_DUE = text(
    """
    SELECT id FROM webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY next_attempt_at LIMIT :limit
    """
)


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    attempts: int
    endpoint_id: uuid.UUID
    url: str
    secret: str
    live: bool
    body: bytes
    age_s: float


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | retry | failed | skipped
    retry_in_s: float | None = None


def claim(session: Session, settings: Settings, delivery_id: int) -> Claimed | None:
    """Take ``delivery_id`` for one attempt; None when it is not due or another worker has it."""
    row = session.execute(_CLAIM, {"id": delivery_id, "lease_s": settings.webhook_lease_s}).first()
    if row is None:
        return None
    body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
    return Claimed(delivery_id=delivery_id, attempts=row.attempts, endpoint_id=row.endpoint_id,
                   url=row.url, secret=row.secret, live=row.live, body=body,
                   age_s=(utc_now() - row.created_at).total_seconds())


def send(settings: Settings, claimed: Claimed) -> tuple[int | None, str | None]:
    """POST the claimed event; (HTTP status or None, error text or None). No transaction."""
    headers = {signing.HEADER: signing.header_value(claimed.secret, claimed.body)}
    try:
        answer = transport.post(
            claimed.url, claimed.body, headers, timeout=settings.webhook_timeout_s,
            max_bytes=settings.webhook_max_response_bytes,
            allow_private=settings.webhook_allow_private,
        )
    except transport.Refused as exc:
        return None, f"refused: {exc}"
    except OSError as exc:  # connection refused or reset, timeout, TLS failure
        return None, f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= answer.status < 300:
        return answer.status, None
    if 300 <= answer.status < 400:
        return answer.status, f"redirect ({answer.status}) not followed"
    return answer.status, f"HTTP {answer.status}"


def backoff_s(settings: Settings, attempts: int) -> float:
    """The wait after the ``attempts``-th failed try: doubling from the base, jittered, capped."""
    base = settings.webhook_retry_base_s * (2 ** min(attempts - 1, 30))
    return min(settings.webhook_retry_max_s, base) * random.uniform(0.8, 1.0)  # noqa: S311


def record(session: Session, settings: Settings, claimed: Claimed, *,
           status_code: int | None, error: str | None) -> Outcome:
    """Store the attempt's outcome and decide what comes next."""
    if error is None:
        done = session.execute(_SUCCEEDED, {"id": claimed.delivery_id,
                                            "status_code": status_code})
        return Outcome("succeeded" if done.rowcount else "skipped")  # type: ignore[attr-defined]
    delivery = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True)
    if delivery is None or delivery.status != "pending":
        return Outcome("skipped")
    delivery.last_status_code = status_code
    delivery.last_error = error
    delivery.leased_until = None
    gone = status_code == 410
    refused = error.startswith("refused:")
    if gone or refused or claimed.age_s >= settings.webhook_retry_window_s:
        delivery.status = "failed"
        why = ("the receiver answered 410 Gone" if gone else
               "its URL is refused" if refused else
               "its deliveries failed for the whole retry window")
        _disable(session, claimed.endpoint_id, reason=why)
        return Outcome("failed")
    wait = backoff_s(settings, claimed.attempts)
    delivery.next_attempt_at = utc_now() + timedelta(seconds=wait)
    return Outcome("retry", retry_in_s=wait)


def _disable(session: Session, endpoint_id: uuid.UUID, *, reason: str) -> None:
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None or not endpoint.enabled:
        return
    endpoint.enabled = False
    endpoint.disabled_reason = reason[:200]
    log.warning("webhook endpoint disabled", extra={"endpoint_id": str(endpoint_id),
                                                    "reason": reason})
    task_queue.enqueue(session, NOTIFY_TASK, "endpoint_disabled", str(endpoint_id))


def drop(session: Session, claimed: Claimed) -> Outcome:
    """The endpoint was disabled or deleted after the event: the delivery fails, unsent."""
    delivery = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True)
    if delivery is not None and delivery.status == "pending":
        delivery.status = "failed"
        delivery.leased_until = None
        delivery.last_error = "endpoint disabled"
    return Outcome("failed")


def due(session: Session, *, limit: int = 500) -> list[int]:
    """Deliveries due now and not leased (retries, lost hand-offs, killed workers)."""
    return list(session.scalars(_DUE, {"limit": limit}))


def redeliver(session: Session, *, endpoint_id: uuid.UUID, delivery_id: int) -> WebhookDelivery:
    """Send a delivery's event to its endpoint again, as a new delivery (same event id)."""
    original = session.get(WebhookDelivery, delivery_id)
    if original is None or original.endpoint_id != endpoint_id:
        raise NotFound(f"delivery {delivery_id} of endpoint {endpoint_id} does not exist",
                       code="webhook_delivery_not_found")
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(f"webhook endpoint {endpoint_id} does not exist",
                       code="webhook_endpoint_not_found")
    if not endpoint.enabled:
        raise Conflict(f"webhook endpoint {endpoint_id} is disabled",
                       code="webhook_endpoint_disabled")
    again = WebhookDelivery(endpoint_id=endpoint_id, event_id=original.event_id)
    session.add(again)
    session.flush()
    task_queue.enqueue(session, DELIVER_TASK, again.id)
    return again


def list_deliveries(session: Session, *, endpoint_id: uuid.UUID, status: str | None = None,
                    limit: int = 50, cursor: str | None = None) -> Page[WebhookDelivery]:
    """An endpoint's deliveries, newest first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return paginate(session, stmt, key=(WebhookDelivery.id,), limit=limit, cursor=cursor)
