"""Holds: reserve credits for a long call, then capture what it used and release the rest.

A hold raises ``users.held_credits`` in the statement that makes it, on condition that the
available credits (balance less what is held) cover it; every spend checks the same
difference on the same row (``ledger``), so concurrent holds and spends never take more
than the balance. Closing a hold lowers ``held_credits`` again, in the statement (or the
transaction) that closes it: a capture through the ledger, like any spend, with the hold
as its reference and ``hold:<id>:capture`` as its dedupe key; a release; an expiry.

Expiry happens by itself: beat's sweep, and lazily whenever a user's available credits
matter (reading the balance, a refused spend or hold). The hold's row lock decides a race
between its capture and its expiry: exactly one of them closes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import CreditHold, User
from services.apikeys import limits
from services.apikeys.keys import KeyInfo
from services.credits import grants, ledger
from services.errors import Conflict, InsufficientCredits, InvalidInput, NotFound

DEFAULT_TTL_S = 3600
MAX_TTL_S = 86_400
SWEEP_BATCH = 500

_RESERVE = text(
    """
    WITH reserved AS (
        UPDATE users SET held_credits = held_credits + :credits
        WHERE id = :user_id AND is_active AND credit_balance - held_credits >= :credits
        RETURNING credit_balance, held_credits
    )
    INSERT INTO credit_holds (user_id, credits, description, endpoint, api_key_id, expires_at)
    SELECT :user_id, :credits, :description, :endpoint, :api_key_id,
           now() + make_interval(secs => :ttl_s)
    FROM reserved
    RETURNING id, expires_at, (SELECT credit_balance FROM reserved) AS balance,
              (SELECT held_credits FROM reserved) AS held
    """
)
# Lock the hold (a capture or a release decides under it); ``due``: expired by now.
_LOCK = text(
    """
    SELECT id, credits, status, expires_at, expires_at <= now() AS due
    FROM credit_holds WHERE id = :hold_id AND user_id = :user_id
    FOR UPDATE
    """
)
_CLOSE = text(
    """
    UPDATE credit_holds
    SET status = :status, captured = :captured, transaction_id = :transaction_id,
        closed_at = now()
    WHERE id = :hold_id AND status = 'active'
    """
)
_UNHOLD = text(
    """
    UPDATE users SET held_credits = held_credits - :credits WHERE id = :user_id
    RETURNING credit_balance, held_credits
    """
)
# Expire a user's due holds: the ones a capture holds locked are left to that capture.
_EXPIRE_USER = text(
    """
    WITH due AS (
        SELECT id FROM credit_holds
        WHERE user_id = :user_id AND status = 'active' AND expires_at <= now()
        ORDER BY id FOR UPDATE SKIP LOCKED
    ), closed AS (
        UPDATE credit_holds h SET status = 'expired', closed_at = now()
        FROM due WHERE h.id = due.id
        RETURNING h.credits
    )
    UPDATE users SET held_credits = held_credits - (SELECT sum(credits) FROM closed)
    WHERE id = :user_id AND EXISTS (SELECT 1 FROM closed)
    RETURNING (SELECT count(*) FROM closed) AS expired
    """
)
_DUE_USERS = text(
    """
    SELECT DISTINCT user_id FROM credit_holds
    WHERE status = 'active' AND expires_at <= now()
    LIMIT :limit
    """
)


class HoldClosed(Conflict):
    code = "hold_closed"


class HoldExpired(Conflict):
    code = "hold_expired"


@dataclass(frozen=True)
class Opened:
    hold_id: uuid.UUID
    credits: int
    expires_at: datetime
    balance: int
    available: int


@dataclass(frozen=True)
class Closed:
    hold_id: uuid.UUID
    status: str
    captured: int | None
    transaction_id: int | None
    balance: int
    available: int


def create(
    session: Session,
    *,
    user_id: uuid.UUID,
    credits: int,
    ttl_s: int = DEFAULT_TTL_S,
    description: str | None = None,
    endpoint: str | None = None,
    key: KeyInfo | None = None,
) -> Opened:
    """Reserve ``credits`` of the available ones for ``ttl_s`` seconds; 402 when short."""
    if not 0 < credits <= ledger.MAX_CREDITS:
        raise InvalidInput(f"credits must be between 1 and {ledger.MAX_CREDITS}",
                           code="invalid_credits")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise InvalidInput(f"ttl_s must be between 1 and {MAX_TTL_S}", code="invalid_ttl")
    params = {
        "user_id": user_id, "credits": credits, "ttl_s": ttl_s, "description": description,
        "endpoint": endpoint, "api_key_id": key.id if key else None,
    }
    # Grants past their expiry leave first: a hold must not reserve credits that are gone.
    grants.expire_user(session, user_id)
    row = session.execute(_RESERVE, params).one_or_none()
    if row is None and expire_user(session, user_id=user_id):
        row = session.execute(_RESERVE, params).one_or_none()  # expired holds freed some
    if row is None:
        state = session.execute(
            select(User.credit_balance, User.held_credits, User.is_active).where(User.id == user_id)
        ).one_or_none()
        if state is None or not state.is_active:
            raise NotFound("no such user", code="user_not_found")
        available = state.credit_balance - state.held_credits
        raise InsufficientCredits(
            f"available {available} cannot cover a hold of {credits} credits",
            balance=state.credit_balance, available=available, required=credits,
        )
    return Opened(hold_id=row.id, credits=credits, expires_at=row.expires_at,
                  balance=row.balance, available=row.balance - row.held)


def capture(
    session: Session,
    *,
    user_id: uuid.UUID,
    hold_id: uuid.UUID,
    credits: int | None = None,
    key: KeyInfo | None = None,
) -> Closed:
    """Spend ``credits`` (default: all) of an active hold and release the rest, in one go.

    The spend is a ledger entry (``hold_capture``) referring to the hold; 404 for a hold
    that is not the user's, 409 ``hold_closed`` / ``hold_expired``, 400 above the hold.
    Made with a limited API ``key``, the capture counts against its limits.
    """
    hold = _locked(session, user_id=user_id, hold_id=hold_id)
    amount = hold.credits if credits is None else credits
    if not 0 < amount <= hold.credits:
        raise InvalidInput(
            f"a capture takes between 1 and the {hold.credits} credits held",
            code="capture_exceeds_hold", held=hold.credits,
        )
    dedupe_key = f"hold:{hold_id}:capture"
    entry = ledger.post(
        session, user_id=user_id, amount=-amount, kind=ledger.HOLD_CAPTURE_KIND,
        reference_type="hold", reference_id=str(hold_id), dedupe_key=dedupe_key,
        held_delta=-hold.credits, serialized=True,  # the hold's lock orders its captures
    )
    if entry is None:  # cannot happen while the hold was active; never spend twice
        raise HoldClosed(f"hold {hold_id} was captured already")
    if key is not None and key.limited:
        limits.charge_in(session, key, credits=amount, dedupe_key=dedupe_key)
    session.execute(_CLOSE, {"hold_id": hold_id, "status": "captured", "captured": amount,
                             "transaction_id": entry.id})
    held = session.scalar(select(User.held_credits).where(User.id == user_id)) or 0
    return Closed(hold_id=hold_id, status="captured", captured=amount, transaction_id=entry.id,
                  balance=entry.balance_after, available=entry.balance_after - held)


def release(session: Session, *, user_id: uuid.UUID, hold_id: uuid.UUID) -> Closed:
    """Give an active hold's credits back to the available ones, spending nothing."""
    hold = _locked(session, user_id=user_id, hold_id=hold_id)
    session.execute(_CLOSE, {"hold_id": hold_id, "status": "released", "captured": None,
                             "transaction_id": None})
    row = session.execute(_UNHOLD, {"user_id": user_id, "credits": hold.credits}).one()
    return Closed(hold_id=hold_id, status="released", captured=None, transaction_id=None,
                  balance=row.credit_balance, available=row.credit_balance - row.held_credits)


def list_active(session: Session, *, user_id: uuid.UUID) -> list[CreditHold]:
    """The user's active holds, soonest expiry first (after expiring the due ones)."""
    expire_user(session, user_id=user_id)
    return list(session.scalars(
        select(CreditHold)
        .where(CreditHold.user_id == user_id, CreditHold.status == "active")
        .order_by(CreditHold.expires_at, CreditHold.id)
        .limit(100)
    ))


def expire_user(session: Session, *, user_id: uuid.UUID) -> int:
    """Expire the user's holds that are due (their credits become available); how many."""
    row = session.execute(_EXPIRE_USER, {"user_id": user_id}).one_or_none()
    if row is None:
        return 0
    _sync(session, user_id)
    return int(row.expired)


async def expire_user_async(db: AsyncDatabase, *, user_id: uuid.UUID) -> int:
    """``expire_user`` on the event loop (a refused spend's second chance)."""
    row = await db.fetchone(_EXPIRE_USER, {"user_id": user_id}, scope="user", user_id=user_id)
    return 0 if row is None else int(row.expired)


def expire_due(session: Session, *, limit: int = SWEEP_BATCH) -> int:
    """Expire due holds of up to ``limit`` users, one user at a time (beat's sweep)."""
    users = session.scalars(_DUE_USERS, {"limit": limit}).all()
    return sum(expire_user(session, user_id=u) for u in users)


def _locked(session: Session, *, user_id: uuid.UUID, hold_id: uuid.UUID) -> Any:
    hold = session.execute(_LOCK, {"hold_id": hold_id, "user_id": user_id}).one_or_none()
    if hold is None:
        raise NotFound(f"hold {hold_id} does not exist", code="hold_not_found")
    if hold.status == "expired" or (hold.status == "active" and hold.due):
        raise HoldExpired(f"hold {hold_id} expired at {hold.expires_at.isoformat()}")
    if hold.status != "active":
        raise HoldClosed(f"hold {hold_id} is {hold.status}")
    return hold


def _sync(session: Session, user_id: uuid.UUID) -> None:
    user = session.identity_map.get(session.identity_key(User, user_id))
    if user is not None:
        session.expire(user, ["held_credits"])
