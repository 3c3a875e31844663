"""A user's credits: spending (with its usage record), the balance and the ledger history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import CreditTransaction, User
from services.apikeys import limits
from services.apikeys.keys import KeyInfo
from services.credits import holds, ledger
from services.errors import InsufficientCredits, InvalidInput, NotFound
from services.logs import logstream
from services.pagination import Page, paginate

USE_METHOD = "POST"
UNSPECIFIED_ENDPOINT = "unspecified"


@dataclass(frozen=True)
class Balance:
    balance: int
    purchased: int
    used: int
    held: int = 0

    @property
    def available(self) -> int:
        """What a spend may take: the balance less the active holds."""
        return self.balance - self.held


def summary(session: Session, user_id: uuid.UUID) -> Balance:
    """The stored balance, the purchased/used totals and the credits held of ``user_id``."""
    row = session.execute(
        select(
            User.credit_balance, User.credits_purchased, User.credits_used, User.held_credits
        ).where(User.id == user_id)
    ).one_or_none()
    if row is None:
        raise NotFound("no such user", code="user_not_found")
    return Balance(balance=row[0], purchased=row[1], used=row[2], held=row[3])


async def use(
    db: AsyncDatabase,
    usage: logstream.UsageSink,
    *,
    user_id: uuid.UUID,
    credits: int,
    description: str | None,
    endpoint: str | None,
    request_id: str | None = None,
    dedupe_key: str | None = None,
    key: KeyInfo | None = None,
    token: tuple[str, str | None] | None = None,
) -> ledger.Entry:
    """Spend ``credits`` for one API call, then hand its usage record to ``usage``.

    The spend is ``ledger.spend`` (see there for refusals, ``dedupe_key`` and ``token``, a
    signed-in token whose revocation the spend's statement checks); a replayed spend
    records no usage again. Made with an API ``key`` that has limits, the key's
    counters are raised in the spend's transaction (``limits``), and a spend past them is
    refused (``KeyLimitReached``) and changes nothing.
    """
    then = None
    if key is not None and key.limited:
        # The counters count the ledger row this transaction wrote: it needs a key to find.
        dedupe_key = dedupe_key or f"key-spend:{uuid.uuid4()}"
        then = limits.charge(key, credits=credits, dedupe_key=dedupe_key)
    try:
        try:
            entry = await ledger.spend(
                db, user_id=user_id, credits=credits, description=description,
                endpoint=endpoint, dedupe_key=dedupe_key, then=then, token=token,
            )
        except InsufficientCredits:
            # Holds past their time still count until expired: expire them, then try again.
            if not await holds.expire_user_async(db, user_id=user_id):
                raise
            entry = await ledger.spend(
                db, user_id=user_id, credits=credits, description=description,
                endpoint=endpoint, dedupe_key=dedupe_key, then=then, token=token,
            )
    except psycopg.errors.CheckViolation as exc:
        if key is not None and limits.is_limit_error(exc):
            raise limits.limit_reached(key, credits) from None
        raise
    if not entry.replayed:
        await logstream.record_usage(usage, **_usage(entry, endpoint, request_id))
    return entry


def _usage(entry: ledger.Entry, endpoint: str | None, request_id: str | None) -> dict[str, Any]:
    return {
        "user_id": str(entry.user_id),
        "endpoint": endpoint or UNSPECIFIED_ENDPOINT,
        "method": USE_METHOD,
        "credits": -entry.amount,
        "status_code": 200,
        "response_time_ms": None,
        "request_id": request_id,
        "transaction_id": entry.id,
    }


def transactions(
    session: Session,
    *,
    user_id: uuid.UUID,
    limit: int = 50,
    cursor: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[CreditTransaction]:
    """Ledger entries of ``user_id``, newest first, ``limit`` per page.

    ``since`` is inclusive and ``until`` exclusive; the cursor continues after the last entry.
    """
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since must be before until", code="invalid_time_range")
    stmt = select(CreditTransaction).where(CreditTransaction.user_id == user_id)
    if kind is not None:
        stmt = stmt.where(CreditTransaction.kind == kind)
    if since is not None:
        stmt = stmt.where(CreditTransaction.created_at >= since)
    if until is not None:
        stmt = stmt.where(CreditTransaction.created_at < until)
    # By id alone: the ledger's index is (user_id, id), and ids grow with time.
    return paginate(session, stmt, key=(CreditTransaction.id,), limit=limit, cursor=cursor)
