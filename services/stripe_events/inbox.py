"""The webhook's side of the inbox: verify a delivery, store it once, hand it to a worker.

A delivery is stored with ``INSERT ... ON CONFLICT (id) DO NOTHING``; only a new row
enqueues ``stripe.process_event``, and only once the insert has committed. If the broker
is down the row is still stored (the sweep enqueues it later); if the database is down
the caller answers 503 and Stripe delivers again. One statement, two doors: ``receive`` for
the webhook (on the event loop) and ``store_many`` for reconciliation (in a worker's
session).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import stripe
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import StripeEvent
from services import task_queue
from services.errors import InvalidInput, UpstreamUnavailable
from services.monitoring import metrics

PROCESS_TASK = "stripe.process_event"
TOLERANCE_S = 300
_MAX_ID = 255
_MAX_TYPE = 100


@dataclass(frozen=True)
class Stored:
    """The outcome of storing one delivery."""

    event_id: str
    type: str
    new: bool


def verify(payload: bytes, signature: str | None, secrets: Sequence[SecretStr]) -> dict[str, Any]:
    """The event in ``payload`` if one of ``secrets`` signed it within the tolerance, else 400.

    Several secrets are accepted so that the signing secret can be rotated without
    dropping deliveries signed with the previous one.
    """
    if not secrets:
        raise UpstreamUnavailable(
            "the webhook signing secret is not configured", code="webhook_not_configured"
        )
    if not signature:
        raise InvalidInput("the Stripe-Signature header is missing", code="signature_missing")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the body is not UTF-8 text", code="malformed_event") from None
    expired = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                text, signature, secret.get_secret_value(), TOLERANCE_S
            )
            break
        except stripe.SignatureVerificationError as exc:
            # The SDK checks the HMAC before the timestamp: "tolerance" means it matched.
            expired = expired or "tolerance" in str(exc)
    else:
        if expired:
            raise InvalidInput(
                "the signature timestamp is too old (replayed delivery?)", code="signature_expired"
            )
        raise InvalidInput("the Stripe signature does not match", code="signature_invalid")
    # The SDK checks only that a delivery is not too old; one dated ahead could be kept
    # and replayed until then.
    if _timestamp(signature) > time.time() + TOLERANCE_S:
        raise InvalidInput("the signature timestamp is in the future", code="signature_future")
    return parse(text)


def _timestamp(signature: str) -> int:
    """The ``t=`` of a ``Stripe-Signature`` header the SDK has already accepted.

    Read as the SDK reads it (the first item that is exactly ``t=...``), so the time
    checked here is the time whose signature it verified.
    """
    for item in signature.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def parse(text: str) -> dict[str, Any]:
    """The Stripe event in JSON ``text``; 400 when it is not one."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise InvalidInput("the body is not JSON", code="malformed_event") from None
    return check(event)


def check(event: object) -> dict[str, Any]:
    """``event`` if it has what processing needs (id, type, created, data.object); else 400."""
    if not isinstance(event, dict):
        raise InvalidInput("the body is not a Stripe event", code="malformed_event")
    event_id, event_type, created = event.get("id"), event.get("type"), event.get("created")
    data = event.get("data")
    problems = []
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_ID:
        problems.append("id")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= _MAX_TYPE:
        problems.append("type")
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        problems.append("created")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        problems.append("data.object")
    if problems:
        raise InvalidInput(
            f"the event lacks a valid {', '.join(problems)}", code="malformed_event"
        )
    return event


_INSERT = text(
    """
    INSERT INTO stripe_events (id, type, livemode, stripe_created, payload)
    VALUES (:id, :type, :livemode, :created, CAST(:payload AS jsonb))
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)


def _row(event: dict[str, Any], payload: str) -> dict[str, Any]:
    """``_INSERT``'s parameters: ``payload`` is the event as JSON text."""
    return {
        "id": event["id"],
        "type": event["type"],
        "livemode": bool(event.get("livemode", False)),
        "created": event["created"],
        "payload": payload,
    }


def store(session: Session, event: dict[str, Any]) -> Stored:
    """Insert the event unless its id is known; enqueue processing after commit if new."""
    inserted = session.execute(_INSERT, _row(event, json.dumps(event))).scalar_one_or_none()
    new = inserted is not None
    if new:
        task_queue.enqueue(session, PROCESS_TASK, event["id"])
    return Stored(event_id=event["id"], type=event["type"], new=new)


def store_many(session: Session, events: Sequence[dict[str, Any]]) -> list[str]:
    """Store the events not yet in the inbox (reconciliation); the ids that were new."""
    ids = [e["id"] for e in events]
    known = set(session.scalars(select(StripeEvent.id).where(StripeEvent.id.in_(ids))))
    return [e["id"] for e in events if e["id"] not in known and store(session, e).new]


async def receive(
    db: AsyncDatabase, payload: bytes, signature: str | None, secrets: Sequence[SecretStr]
) -> Stored:
    """Verify a webhook delivery and store it once (the webhook endpoint's one call).

    On the event loop: the insert is a transaction of its own (one round trip, in the
    ``service`` scope); once it has committed, the event is handed to the background sender
    (``task_queue.send_soon``): the answer does not wait for the broker, and an event whose task
    is lost (a crash, a broker outage) is still stored and pending, so the sweep enqueues
    it. The body is stored as sent: it was just parsed and checked.
    """
    event = verify(payload, signature, secrets)
    row = await db.fetchone(_INSERT, _row(event, payload.decode()), scope="service")
    if row is not None:
        task_queue.send_soon(PROCESS_TASK, event["id"])
    metrics.stripe_event_received(event["type"], new=row is not None)
    return Stored(event_id=event["id"], type=event["type"], new=row is not None)
