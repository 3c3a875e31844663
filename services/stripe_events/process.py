"""The worker's side of the inbox: process one stored event exactly once.

The row is taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` (in the statement that marks
it): a second worker holding the same id (a duplicate message, a sweep, a redelivery
after a crash) returns at once instead of waiting. The handler's money moves and the
``processed`` mark commit in one transaction, so a crash before commit leaves the event
pending and moves nothing, and a crash after commit leaves it processed: it is never
applied twice.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import stripe
from sqlalchemy import Table, bindparam, select, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import StripeEvent
from services import audit, outbox
from services.errors import Conflict, InvalidInput, NotFound
from services.stripe_events.context import Event
from services.stripe_events.handlers import HANDLERS
from services.stripe_events.inbox import PROCESS_TASK
from services.stripe_objects import Skip
from settings import Settings

log = logging.getLogger(__name__)

DONE = frozenset({"processed", "ignored"})
_ERROR_MAX = 500

# The hot path's statements, built once. The claim locks a pending event FOR UPDATE SKIP
# LOCKED (held by another transaction: no row, at once), counts the try and marks it
# processed, in one round trip; it commits or rolls back with the handler's writes. An
# event the handler skips is marked again, as ignored.
_events = cast(Table, StripeEvent.__table__)
_CLAIM = (
    update(_events)
    .where(
        _events.c.id
        == select(_events.c.id)
        .where(_events.c.id == bindparam("event_id"), _events.c.status == "pending")
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(
        status="processed",
        attempts=_events.c.attempts + 1,
        last_error=None,
        processed_at=bindparam("now"),
    )
    .returning(_events.c.type, _events.c.stripe_created, _events.c.payload)
)
_STATUS = select(_events.c.status).where(_events.c.id == bindparam("event_id"))
_IGNORE = (
    update(_events)
    .where(_events.c.id == bindparam("event_id"))
    .values(status="ignored", last_error=bindparam("note"))
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
        status = session.scalar(_STATUS, {"event_id": event_id})
        return "missing" if status is None else "busy" if status == "pending" else str(status)
    _expire_loaded(session, event_id)
    event_type, created, payload = row
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
    session.execute(_IGNORE, {"event_id": event_id, "note": note[:_ERROR_MAX]})
    return "ignored"


def _expire_loaded(session: Session, event_id: str) -> None:
    """Drop a stale ORM copy of the event (the statements above bypass the identity map)."""
    loaded = session.identity_map.get(session.identity_key(StripeEvent, event_id))
    if loaded is not None:
        session.expire(loaded)


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
    outbox.enqueue(session, PROCESS_TASK, row.id)
    return row


def get(session: Session, event_id: str) -> StripeEvent:
    """One stored event; 404 when unknown."""
    row = session.get(StripeEvent, event_id)
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    return row


@dataclass(frozen=True)
class EventPage:
    items: Sequence[StripeEvent]
    next_cursor: str | None


def list_events(
    session: Session,
    *,
    status: str | None = None,
    event_type: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> EventPage:
    """Stored events, newest first, optionally of one status and type."""
    query = (
        select(StripeEvent)
        .order_by(StripeEvent.received_at.desc(), StripeEvent.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        query = query.where(StripeEvent.status == status)
    if event_type is not None:
        query = query.where(StripeEvent.type == event_type)
    if cursor:
        moment, last_id = _decode_cursor(cursor)
        query = query.where(
            tuple_(StripeEvent.received_at, StripeEvent.id) < tuple_(moment, last_id)
        )
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].received_at, rows[-1].id) if more and rows else None
    return EventPage(items=rows, next_cursor=next_cursor)


def _encode_cursor(moment: datetime, event_id: str) -> str:
    raw = f"{moment.isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, event_id = raw.split("|", 1)
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None or not event_id:
            raise ValueError("incomplete cursor")
        return moment, event_id
    except ValueError:
        raise InvalidInput("cursor is not valid", code="invalid_cursor") from None
