"""Metered events in batches: ``POST /usage/events`` (on the event loop)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import BearerDep, request_id_of
from api.keyauth import principal_on_loop
from api.schemas.metering import EventsIn, EventsOut
from services.apikeys import keys as apikeys
from services.metering import events as metering

router = APIRouter(prefix="/api/user-management/usage", tags=["credits"])


@router.post(
    "/events", response_model=EventsOut, summary="Apply a batch of metered events",
    responses={400: {"description": "duplicate_event_id: an id twice in the batch"},
               403: {"description": "api_key_scope_missing"}},
)
async def post_events(request: Request, body: EventsIn, credentials: BearerDep) -> Any:
    """Apply 1 to 1000 events, each at most once per (user, id); a result for each.

    With a server key each event names its ``user_id``; with a user's key or token, events
    are the user's own. A retried batch answers ``duplicate`` (with the first transaction
    id) for the events it applied before.
    """
    who = await principal_on_loop(request, credentials, scope=apikeys.EVENTS, server_keys=True)
    results = await metering.apply(
        request.state.db, request.state.aredis,
        events=[metering.Event(id=e.id, credits=e.credits, user_id=e.user_id,
                               endpoint=e.endpoint, description=e.description)
                for e in body.events],
        user_id=who.user_id, key=who.key, request_id=request_id_of(request),
    )
    # Shaped here rather than through the response model, which would validate each of up
    # to a thousand results again on the way out.
    return JSONResponse({"results": [
        {"id": r.id, "status": r.status, "transaction_id": r.transaction_id,
         "balance": r.balance, "message": r.message} for r in results]})
