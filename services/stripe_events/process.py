"""The worker's side of the inbox: process one stored event exactly once.

The row is taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` (in the statement that marks
it): a second worker holding the same id (a duplicate message, a sweep, a redelivery after
a crash) returns at once instead of waiting. The handler's money moves and the
``processed`` mark commit in one transaction, so a crash before commit leaves the event
pending and moves nothing, and a crash after commit leaves it processed: it is never
applied twice.
"""

from __future__ import annotations

import logging
import uuid

import stripe
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import StripeEvent
from services import task_queue
from services.admin import audit
from services.errors import Conflict, NotFound
from services.monitoring import metrics
from services.pagination import Page, paginate
from services.payments.stripe_objects import Skip
from services.stripe_events.context import Event
from services.stripe_events.handlers import HANDLERS
from services.stripe_events.inbox import PROCESS_TASK
from settings import Settings

log = logging.getLogger(__name__)

DONE = frozenset({"processed", "ignored"})
_ERROR_MAX = 500

# The claim, one round trip: lock the event if it is pending and free (SKIP LOCKED: held by
# another transaction gives no row, at once), count the try and mark it processed; it
# commits or rolls back with the handler's writes. It is the first statement of the task's
# own transaction, so no copy of the event is loaded that it would have to keep in step.
_CLAIM = (
    update(StripeEvent)
    .where(
        StripeEvent.id
        == select(StripeEvent.id)
        .where(StripeEvent.id == bindparam("event_id"), StripeEvent.status == "pending")
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(status="processed", attempts=StripeEvent.attempts + 1, last_error=None,
            processed_at=bindparam("now"))
    .returning(StripeEvent.type, StripeEvent.stripe_created, StripeEvent.payload,
               StripeEvent.received_at)
    .execution_options(synchronize_session=False)
)


def process(session: Session, *, event_id: str, settings: Settings) -> str:
    """Run the handler of a pending event and mark it; returns the event's status after.

    ``busy`` means another worker holds the event right now; ``missing`` that no such
    event is stored. Handler errors propagate (the caller's transaction rolls back, the
    claim with it).
    """
    row = session.execute(_CLAIM, {"event_id": event_id, "now": utc_now()}).one_or_none()
    if row is None:
        # Not pending (processed or ignored: done; failed: only an admin retry revives
        # it), held by another worker, or unknown.
        status = session.scalar(select(StripeEvent.status).where(StripeEvent.id == event_id))
        return "missing" if status is None else "busy" if status == "pending" else str(status)
    event_type, created, payload, received_at = row
    metrics.stripe_event_lag(session, received_at)
    handler = HANDLERS.get(event_type)
    if handler is None:
        return _ignore(session, event_id, f"no handler for {event_type}")
    event = Event(
        id=event_id,
        type=event_type,
        created=created,
        object=payload["data"]["object"],
        settings=settings,
    )
    try:
        handler(session, event)
    except Skip as skip:
        return _ignore(session, event_id, str(skip))
    return "processed"


def _ignore(session: Session, event_id: str, note: str) -> str:
    session.execute(
        update(StripeEvent).where(StripeEvent.id == event_id)
        .values(status="ignored", last_error=note[:_ERROR_MAX])
    )
    return "ignored"


def record_failure(
    session: Session, *, event_id: str, error: BaseException, max_attempts: int, final: bool = False
) -> bool:
    """Count a failed try of a pending event; park it as ``failed`` after ``max_attempts``.

    Returns True when the event needs no further retry (parked, or no longer pending).
    """
    row = session.scalar(select(StripeEvent).where(StripeEvent.id == event_id).with_for_update())
    if row is None or row.status != "pending":
        return True
    row.attempts += 1
    row.last_error = describe(error)
    if final or row.attempts >= max_attempts:
        row.status = "failed"
        metrics.stripe_event_parked(session)
        log.warning(
            "stripe event parked as failed",
            extra={"event_id": event_id, "event_type": row.type, "attempts": row.attempts},
        )
        return True
    return False


def describe(error: BaseException) -> str:
    """The error's type and a short message, for operators: no SQL parameters, no secrets."""
    if isinstance(error, DBAPIError):
        inner = error.orig if error.orig is not None else error
        message = str(inner).splitlines()[0] if str(inner) else ""
        name = type(inner).__name__
    elif isinstance(error, stripe.StripeError):
        name = type(error).__name__
        message = error.user_message or error.code or ""
    else:
        name = type(error).__name__
        message = str(error).splitlines()[0] if str(error) else ""
    return f"{name}: {message}"[:_ERROR_MAX]


def retry(
    session: Session, *, event_id: str, admin_id: uuid.UUID, request_id: str | None = None
) -> StripeEvent:
    """Put a failed (or stuck pending) event back in the queue, with a fresh count of tries."""
    row = session.scalar(select(StripeEvent).where(StripeEvent.id == event_id).with_for_update())
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    if row.status in DONE:
        raise Conflict(f"the event is already {row.status}", code="event_done")
    before = {"status": row.status, "attempts": row.attempts, "last_error": row.last_error}
    row.status = "pending"
    row.attempts = 0
    audit.record(
        session,
        admin_id=admin_id,
        action="stripe_event.retry",
        before={"event_id": row.id, **before},
        after={"event_id": row.id, "status": "pending"},
        request_id=request_id,
    )
    session.flush()
    task_queue.enqueue(session, PROCESS_TASK, row.id)
    return row


def get(session: Session, event_id: str) -> StripeEvent:
    """One stored event; 404 when unknown."""
    row = session.get(StripeEvent, event_id)
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    return row


def list_events(
    session: Session,
    *,
    status: str | None = None,
    event_type: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[StripeEvent]:
    """Stored events, newest first, optionally of one status and type."""
    stmt = select(StripeEvent)
    if status is not None:
        stmt = stmt.where(StripeEvent.status == status)
    if event_type is not None:
        stmt = stmt.where(StripeEvent.type == event_type)
    return paginate(session, stmt, key=(StripeEvent.received_at, StripeEvent.id), limit=limit,
                    cursor=cursor)
