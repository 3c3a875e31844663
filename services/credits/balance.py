"""A user's credits: spending (with its usage record), the balance and the ledger history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import CreditTransaction, User
from services.credits import ledger
from services.errors import InvalidInput, NotFound
from services.logs import logstream
from services.pagination import Page, paginate

USE_METHOD = "POST"
UNSPECIFIED_ENDPOINT = "unspecified"


@dataclass(frozen=True)
class Balance:
    balance: int
    purchased: int
    used: int


def summary(session: Session, user_id: uuid.UUID) -> Balance:
    """The stored balance and the purchased/used totals of ``user_id``."""
    row = session.execute(
        select(User.credit_balance, User.credits_purchased, User.credits_used).where(
            User.id == user_id
        )
    ).one_or_none()
    if row is None:
        raise NotFound("no such user", code="user_not_found")
    return Balance(balance=row[0], purchased=row[1], used=row[2])


async def use(
    db: AsyncDatabase,
    client: redis.asyncio.Redis,
    *,
    user_id: uuid.UUID,
    credits: int,
    description: str | None,
    endpoint: str | None,
    request_id: str | None = None,
    dedupe_key: str | None = None,
) -> ledger.Entry:
    """Spend ``credits`` for one API call, then hand its usage record off.

    The spend is ``ledger.spend`` (see there for refusals and ``dedupe_key``); a replayed
    spend records no usage again.
    """
    entry = await ledger.spend(
        db, user_id=user_id, credits=credits, description=description, endpoint=endpoint,
        dedupe_key=dedupe_key,
    )
    if not entry.replayed:
        await logstream.record_usage(client, **_usage(entry, endpoint, request_id))
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
