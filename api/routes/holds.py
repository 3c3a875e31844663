"""Holds on credits: reserve for a long call, capture what it used, release the rest."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from api.deps import SessionDep
from api.idempotency import IdempotencyDep
from api.keyauth import ReaderDep, SpenderDep
from api.schemas.metering import (
    ActiveHoldOut,
    CaptureIn,
    CaptureOut,
    HoldIn,
    HoldOut,
    ReleaseOut,
)
from services.credits import holds

router = APIRouter(prefix="/api/user-management/credits/holds", tags=["credits"])

_CLOSED: dict[int | str, dict[str, Any]] = {
    404: {"description": "hold_not_found (also another user's hold)"},
    409: {"description": "hold_closed | hold_expired, or an Idempotency-Key conflict"},
}


@router.post("", response_model=HoldOut, status_code=201, summary="Reserve credits",
             responses={402: {"description": "insufficient_credits: the available are short"},
                        409: {"description": "Idempotency-Key conflict"}})
def create_hold(body: HoldIn, who: SpenderDep, session: SessionDep, idem: IdempotencyDep) -> Any:
    """Hold ``credits`` of the available ones for ``ttl_s`` seconds (default an hour)."""
    user_id = who.user_id
    assert user_id is not None

    def work() -> HoldOut:
        opened = holds.create(
            session, user_id=user_id, credits=body.credits, ttl_s=body.ttl_s,
            description=body.description, endpoint=body.endpoint, key=who.key,
        )
        return HoldOut(hold_id=opened.hold_id, credits=opened.credits,
                       expires_at=opened.expires_at, balance=opened.balance,
                       available=opened.available)

    return idem.run(session, user_id=user_id, body=body, work=work, status_code=201)


@router.get("", response_model=list[ActiveHoldOut], summary="The active holds")
def list_holds(who: ReaderDep, session: SessionDep) -> list[ActiveHoldOut]:
    """The user's active holds, soonest expiry first (at most 100)."""
    assert who.user_id is not None
    return [ActiveHoldOut.model_validate(h)
            for h in holds.list_active(session, user_id=who.user_id)]


@router.post("/{hold_id}/capture", response_model=CaptureOut, summary="Spend from a hold",
             responses={**_CLOSED, 400: {"description": "capture_exceeds_hold"},
                        402: {"description": "key_limit_reached"}})
def capture_hold(hold_id: uuid.UUID, who: SpenderDep, session: SessionDep,
                 idem: IdempotencyDep, body: CaptureIn | None = None) -> Any:
    """Spend ``credits`` (default: all) of the hold and release the rest; a ledger entry."""
    user_id = who.user_id
    assert user_id is not None
    wanted = body.credits if body is not None else None

    def work() -> CaptureOut:
        closed = holds.capture(session, user_id=user_id, hold_id=hold_id, credits=wanted,
                               key=who.key)
        assert closed.transaction_id is not None and closed.captured is not None
        return CaptureOut(hold_id=hold_id, transaction_id=closed.transaction_id,
                          captured=closed.captured, balance=closed.balance,
                          available=closed.available)

    return idem.run(session, user_id=user_id, body={"credits": wanted}, work=work)


@router.post("/{hold_id}/release", response_model=ReleaseOut, summary="Release a hold",
             responses=_CLOSED)
def release_hold(hold_id: uuid.UUID, who: SpenderDep, session: SessionDep) -> ReleaseOut:
    """Give the held credits back to the available ones; nothing is spent."""
    assert who.user_id is not None
    closed = holds.release(session, user_id=who.user_id, hold_id=hold_id)
    return ReleaseOut(hold_id=hold_id, balance=closed.balance, available=closed.available)
