"""Admin management of webhook endpoints: create (secret shown once), list, delete."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import WebhookEndpoint
from services.admin import audit
from services.errors import InvalidInput, NotFound
from services.webhooks import signing, transport
from services.webhooks.events import ALL, EVENT_TYPES
from settings import Settings

MAX_EVENTS = len(EVENT_TYPES)


@dataclass(frozen=True)
class Created:
    endpoint: WebhookEndpoint
    secret: str


def _check_events(events: list[str]) -> list[str]:
    if not events:
        raise InvalidInput("events: name at least one event type (or '*')",
                           code="invalid_webhook_events")
    unknown = sorted({e for e in events if e != ALL and e not in EVENT_TYPES})
    if unknown:
        raise InvalidInput(f"events: unknown event type {unknown[0]!r}",
                           code="invalid_webhook_events")
    return sorted(set(events))


def create(session: Session, settings: Settings, *, admin_id: uuid.UUID, url: str,
           events: list[str], description: str | None, request_id: str | None) -> Created:
    """A new endpoint for ``events`` at ``url`` (http(s), public unless allowed), audited."""
    chosen = _check_events(events)
    transport.validate_endpoint_url(url, allow_private=settings.webhook_allow_private)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(url=url, events=chosen, description=description, secret=secret)
    session.add(endpoint)
    session.flush()
    audit.record(session, admin_id=admin_id, action="webhook_endpoint.create", before=None,
                 after={"id": str(endpoint.id), "url": url, "events": chosen},
                 request_id=request_id)
    return Created(endpoint=endpoint, secret=secret)


def list_endpoints(session: Session) -> list[WebhookEndpoint]:
    """Endpoints not deleted, oldest first."""
    return list(session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ))


def get(session: Session, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """The endpoint ``endpoint_id`` (not deleted), or ``NotFound``."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(f"webhook endpoint {endpoint_id} does not exist",
                       code="webhook_endpoint_not_found")
    return endpoint


def delete(session: Session, *, admin_id: uuid.UUID, endpoint_id: uuid.UUID,
           request_id: str | None) -> None:
    """Stop sending to the endpoint (its delivery log stays), audited."""
    endpoint = get(session, endpoint_id)
    endpoint.deleted_at = utc_now()
    endpoint.enabled = False
    audit.record(session, admin_id=admin_id, action="webhook_endpoint.delete",
                 before={"id": str(endpoint.id), "url": endpoint.url}, after={"deleted": True},
                 request_id=request_id)
