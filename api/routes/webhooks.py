"""Stripe's webhook: verify, store once, enqueue after commit, answer at once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request

from api.schemas.stripe import WebhookOut
from services.stripe_events import inbox

router = APIRouter(prefix="/api/user-management", tags=["webhooks"])


async def raw_body(request: Request) -> bytes:
    """The body exactly as sent: the signature covers these bytes, not a re-encoding."""
    # Stripe sends application/json; a body declared as anything else is not its delivery.
    declared = request.headers.get("content-type")
    if declared is not None and declared.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "a Stripe event is sent as application/json")
    return await request.body()


@router.post(
    "/webhook/stripe",
    response_model=WebhookOut,
    summary="Receive a Stripe event",
    responses={
        400: {"description": "Missing or bad signature, stale or future timestamp, not an event"},
        413: {"description": "payload_too_large"},
        415: {"description": "unsupported_media_type: the body is not declared as JSON"},
        503: {"description": "The database is down: nothing stored, Stripe delivers again"},
    },
)
async def stripe_webhook(
    request: Request,
    body: Annotated[bytes, Depends(raw_body)],
    signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookOut:
    """Store a signed event (once per id) and queue it; processing happens in a worker.

    On the event loop, one round trip to the database (``db.aio``, as the ``service``
    scope of Row Level Security): Stripe's delivery rate is the API's, not ours.
    """
    secrets = request.app.state.settings.stripe_webhook_secret
    stored = await inbox.receive(request.state.db, body, signature, secrets)
    return WebhookOut(duplicate=not stored.new)
