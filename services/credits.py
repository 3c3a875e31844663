"""A user's credits: spending (with its usage record), the balance and the ledger history."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.asyncio
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import CreditTransaction, User
from services import ledger, logstream
from services.errors import InvalidInput, NotFound

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


def use(
    session: Session,
    client: redis.Redis,
    *,
    user_id: uuid.UUID,
    credits: int,
    description: str | None,
    endpoint: str | None,
    request_id: str | None = None,
) -> ledger.Entry:
    """Spend ``credits`` for one API call and hand its usage record off after commit.

    Raises ``InsufficientCredits`` (with the current balance) when the balance is short;
    then nothing is spent and nothing is recorded.
    """
    entry = ledger.spend(
        session, user_id=user_id, credits=credits, description=description, endpoint=endpoint
    )
    logstream.record_usage(session, client, **_usage(entry, endpoint, request_id))
    return entry


async def use_async(
    db: AsyncDatabase,
    client: redis.asyncio.Redis,
    *,
    user_id: uuid.UUID,
    credits: int,
    description: str | None,
    endpoint: str | None,
    request_id: str | None = None,
) -> ledger.Entry:
    """``use`` from the event loop: one transaction, then the usage hand-off.

    Also refuses (``NotFound``, nothing spent) a user who does not exist or is deactivated,
    so a caller that checked only the token needs no separate read of the user.
    """
    entry = await ledger.spend_active(
        db, user_id=user_id, credits=credits, description=description, endpoint=endpoint
    )
    await logstream.record_usage_async(client, **_usage(entry, endpoint, request_id))
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


@dataclass(frozen=True)
class TransactionPage:
    items: list[CreditTransaction]
    next_cursor: str | None


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"t{last_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("t"):
            raise ValueError(raw)
        return int(raw[1:])
    except ValueError:
        raise InvalidInput("cursor is not valid", code="invalid_cursor") from None


def transactions(
    session: Session,
    *,
    user_id: uuid.UUID,
    limit: int = 50,
    cursor: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TransactionPage:
    """Ledger entries of ``user_id``, newest first, ``limit`` per page.

    ``since`` is inclusive and ``until`` exclusive; the cursor continues after the last entry.
    """
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since must be before until", code="invalid_time_range")
    query = (
        select(CreditTransaction)
        .where(CreditTransaction.user_id == user_id)
        .order_by(CreditTransaction.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        query = query.where(CreditTransaction.id < _decode_cursor(cursor))
    if kind is not None:
        query = query.where(CreditTransaction.kind == kind)
    if since is not None:
        query = query.where(CreditTransaction.created_at >= since)
    if until is not None:
        query = query.where(CreditTransaction.created_at < until)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return TransactionPage(
        items=rows, next_cursor=_encode_cursor(rows[-1].id) if more and rows else None
    )
