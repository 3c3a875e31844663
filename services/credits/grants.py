"""Grants (lots of credits): reading them, admin bonus grants, and their expiry.

The ledger's function (migration 0004, ``ledger_post``) makes and burns grants; this module
reads them, adds an operator's bonus through the ledger with its audit row, and lets expired
remainders leave (``expire_grants``: one ``expiry`` ledger row per grant, exactly once, the
user's row lock ordering it against spends and against a twin sweep).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import CreditGrant, User
from services.admin import audit
from services.credits import ledger
from services.errors import InvalidInput, NotFound
from services.pagination import Page, paginate

log = logging.getLogger(__name__)

BONUS_ACTION = "credits.grant"
MAX_PRIORITY = 100
_DESCRIPTION_MAX = 500

_EXPIRE = text("SELECT transaction_id, grant_id, credits FROM expire_grants(:user_id)")
_DUE_USERS = text(
    "SELECT DISTINCT user_id FROM credit_grants "
    "WHERE remaining > 0 AND expires_at <= now() LIMIT :limit"
)
_ACTIVE = (
    select(CreditGrant)
    .where(CreditGrant.user_id == bindparam("user_id"), CreditGrant.remaining > 0)
    .order_by(CreditGrant.priority, CreditGrant.expires_at.asc().nulls_last(), CreditGrant.id)
)


# The ledger rows that changed one grant, newest first: the user's rows since the grant was
# made whose ``grants`` name it.
_MOVEMENTS = text(
    """
    SELECT t.id AS transaction_id, t.kind, t.created_at, (e->>'credits')::bigint AS credits
    FROM credit_transactions t CROSS JOIN LATERAL jsonb_array_elements(t.grants) e
    WHERE t.user_id = :user_id AND t.created_at >= :since
      AND t.grants @> CAST(:needle AS jsonb) AND (e->>'grant_id')::bigint = :grant_id
    ORDER BY t.id DESC
    LIMIT :limit
    """
)


@dataclass(frozen=True)
class Movement:
    """What one ledger entry did to a grant: ``credits`` is the signed change of remaining."""

    transaction_id: int
    kind: str
    credits: int
    created_at: datetime


@dataclass(frozen=True)
class Bonus:
    grant: CreditGrant
    transaction_id: int
    balance_after: int
    audit_id: int


def active(session: Session, user_id: uuid.UUID) -> list[CreditGrant]:
    """The grants of ``user_id`` that hold credits, in the order a spend burns them."""
    return list(session.scalars(_ACTIVE, {"user_id": user_id}))


def list_grants(
    session: Session, *, user_id: uuid.UUID, limit: int = 50, cursor: str | None = None
) -> Page[CreditGrant]:
    """Every grant of ``user_id``, spent and expired too, newest first."""
    stmt = select(CreditGrant).where(CreditGrant.user_id == user_id)
    return paginate(session, stmt, key=(CreditGrant.id,), limit=limit, cursor=cursor)


def history(
    session: Session, *, user_id: uuid.UUID, grant_id: int, limit: int = 100
) -> tuple[CreditGrant, list[Movement]]:
    """One grant of ``user_id`` and the ledger entries that changed it, newest first."""
    grant = session.scalar(select(CreditGrant).where(CreditGrant.id == grant_id,
                                                     CreditGrant.user_id == user_id))
    if grant is None:
        raise NotFound("no such grant", code="grant_not_found")
    rows = session.execute(_MOVEMENTS, {
        "user_id": user_id, "since": grant.created_at, "grant_id": grant_id, "limit": limit,
        "needle": json.dumps([{"grant_id": grant_id}]),
    }).all()
    return grant, [Movement(transaction_id=r.transaction_id, kind=r.kind, credits=r.credits,
                            created_at=r.created_at) for r in rows]


def expire_user(session: Session, user_id: uuid.UUID) -> int:
    """Let the expired remainders of ``user_id`` leave now (one ``expiry`` row per grant); how
    many grants expired.

    Cheap when none is due (one index probe, no lock). Exactly once: the function takes the
    user's row lock and a grant that left has nothing remaining; each row's dedupe key
    (``expiry:<grant id>``) backs it. Each expiry is announced from its ledger row
    (``services.credits.events``), as one found by a spend is."""
    gone = len(session.execute(_EXPIRE, {"user_id": user_id}).all())
    if gone:
        ledger.forget_balance(session, user_id)
    return gone


def expire_due(
    open_transaction: Callable[[], AbstractContextManager[Session]], *, batch: int = 500
) -> int:
    """The scheduled sweep: expire every due grant, one transaction per user; how many left."""
    total = 0
    while True:
        with open_transaction() as session:
            users = list(session.scalars(_DUE_USERS, {"limit": batch}))
        if not users:
            return total
        done = 0
        for user_id in users:
            with open_transaction() as session:
                done += expire_user(session, user_id)
        total += done
        if done == 0:  # every user listed was expired by a twin meanwhile
            return total


def _check_amount(amount: int) -> None:
    if not 0 < amount <= ledger.MAX_CREDITS:
        raise InvalidInput(f"amount must be between 1 and {ledger.MAX_CREDITS}",
                           code="invalid_amount")


def check_terms(*, amount: int, expires_at: datetime | None, priority: int | None) -> None:
    """Refuse a grant's bad terms: amount out of 1..2^31-1, expiry past, priority out of 0..100."""
    _check_amount(amount)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidInput("expires_at needs a time zone", code="invalid_expires_at")
        if expires_at <= utc_now():
            raise InvalidInput("expires_at is in the past", code="invalid_expires_at")
    if priority is not None and not 0 <= priority <= MAX_PRIORITY:
        raise InvalidInput(f"priority must be between 0 and {MAX_PRIORITY}",
                           code="invalid_priority")


def bonus(
    session: Session,
    *,
    admin_id: uuid.UUID,
    user_id: uuid.UUID,
    amount: int,
    reason: str,
    expires_at: datetime | None = None,
    priority: int | None = None,
    request_id: str | None = None,
) -> Bonus:
    """An operator's bonus grant, with its audit row in the same transaction."""
    check_terms(amount=amount, expires_at=expires_at, priority=priority)
    if not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    if session.get(User, user_id) is None:
        raise NotFound("no such user", code="user_not_found")
    entry = ledger.post(
        session, user_id=user_id, amount=amount, kind="bonus", reference_type="admin",
        reference_id=str(admin_id), description=reason[:_DESCRIPTION_MAX],
        expires_at=expires_at, priority=priority,
    )
    assert entry is not None and entry.grant_id is not None  # no dedupe key: never skipped
    grant = session.get_one(CreditGrant, entry.grant_id)
    trail = audit.record(
        session, admin_id=admin_id, target_user_id=user_id, action=BONUS_ACTION,
        before={"balance": entry.balance_after - amount},
        after={"balance": entry.balance_after, "amount": amount, "grant_id": grant.id,
               "transaction_id": entry.id, "priority": grant.priority,
               "expires_at": expires_at.isoformat() if expires_at else None},
        reason=reason, request_id=request_id,
    )
    session.flush()
    return Bonus(grant=grant, transaction_id=entry.id, balance_after=entry.balance_after,
                 audit_id=trail.id)


def expiry_of(session: Session, *, reference_type: str, reference_id: str) -> datetime | None:
    """When the first grant made for a reference (a payment, an invoice) lapses."""
    return session.scalar(
        select(CreditGrant.expires_at)
        .where(CreditGrant.reference_type == reference_type,
               CreditGrant.reference_id == reference_id)
        .order_by(CreditGrant.id).limit(1)
    )


