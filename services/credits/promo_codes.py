"""Promo codes: admins make them, users redeem each once for a grant.

A code is case-insensitive: it is found by the SHA-256 of its upper-cased text (the unique
key), and the stored hash is compared with ``hmac.compare_digest``, so neither the lookup nor
the comparison takes longer for a closer guess. Redemptions are counted by one conditional
update of the code's row (``redemptions < max_redemptions``): concurrent redemptions queue on
that row and never pass the maximum; a user's second redemption is refused (and a unique key
on (code, user) backs it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import CreditGrant, PromoCode, PromoRedemption
from services.admin import audit
from services.credits import grants, ledger
from services.errors import Conflict, InvalidInput, NotFound
from services.pagination import Page, paginate

CREATE_ACTION = "promo_code.create"
CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
MAX_CODE_LENGTH = 64
MAX_VALIDITY_DAYS = 36_500


@dataclass(frozen=True)
class Redemption:
    code: PromoCode
    grant: CreditGrant
    transaction_id: int
    balance_after: int


def code_hash(code: str) -> str:
    """The key a code is found by: SHA-256 of its upper-cased text."""
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


def _check_code(code: str) -> None:
    if not CODE_PATTERN.fullmatch(code):
        raise InvalidInput("a code is 3 to 64 letters, digits, '-' or '_', starting with a "
                           "letter or digit", code="invalid_promo_code")


def create(
    session: Session,
    *,
    admin_id: uuid.UUID,
    code: str,
    credits: int,
    max_redemptions: int | None = None,
    valid_until: datetime | None = None,
    grant_validity_days: int | None = None,
    request_id: str | None = None,
) -> PromoCode:
    """A new code (audited); 409 ``promo_code_exists`` when its text is taken, in any case."""
    code = code.strip()
    _check_code(code)
    grants.check_terms(amount=credits, expires_at=valid_until, priority=None)
    if max_redemptions is not None and not 0 < max_redemptions <= ledger.MAX_CREDITS:
        raise InvalidInput("max_redemptions must be positive", code="invalid_max_redemptions")
    if grant_validity_days is not None and not 0 < grant_validity_days <= MAX_VALIDITY_DAYS:
        raise InvalidInput(f"grant_validity_days must be between 1 and {MAX_VALIDITY_DAYS}",
                           code="invalid_grant_validity")
    row = PromoCode(code=code, code_hash=code_hash(code), credits=credits,
                    max_redemptions=max_redemptions, valid_until=valid_until,
                    grant_validity_days=grant_validity_days, created_by=admin_id)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(f"promo code {code!r} exists", code="promo_code_exists") from None
    audit.record(
        session, admin_id=admin_id, action=CREATE_ACTION, before=None,
        after={"promo_code_id": str(row.id), "code": code, "credits": credits,
               "max_redemptions": max_redemptions,
               "valid_until": valid_until.isoformat() if valid_until else None,
               "grant_validity_days": grant_validity_days},
        request_id=request_id,
    )
    session.flush()
    return row


def list_codes(session: Session, *, limit: int = 50, cursor: str | None = None) -> Page[PromoCode]:
    """Every code, newest first."""
    return paginate(session, select(PromoCode), key=(PromoCode.created_at, PromoCode.id),
                    limit=limit, cursor=cursor)


def check_input(code: str) -> None:
    """Refuse what cannot be a code before looking it up (empty, too long, control chars)."""
    if not code.strip():
        raise InvalidInput("a code is required", code="invalid_promo_code")
    if len(code) > MAX_CODE_LENGTH or any(not c.isprintable() for c in code):
        raise InvalidInput("not a promo code", code="invalid_promo_code")


def redeem(session: Session, *, user_id: uuid.UUID, code: str) -> Redemption:
    """Redeem ``code`` for ``user_id``: a ``promo`` grant, once per user, within the maximum.

    404 ``promo_not_found``; 409 ``promo_already_redeemed``, ``promo_exhausted`` or
    ``promo_expired``; nothing changes then (the caller's transaction rolls back).
    """
    check_input(code)
    wanted = code_hash(code)
    found = session.scalar(select(PromoCode).where(PromoCode.code_hash == wanted))
    if found is None or not hmac.compare_digest(found.code_hash, wanted) or not found.active:
        raise NotFound("no such promo code", code="promo_not_found")
    now = utc_now()
    # Counted first: the code's row lock queues concurrent redemptions, so the checks below
    # see every redemption that committed before this one.
    counted = session.execute(
        update(PromoCode)
        .where(PromoCode.id == found.id,
               (PromoCode.max_redemptions.is_(None))
               | (PromoCode.redemptions < PromoCode.max_redemptions),
               (PromoCode.valid_until.is_(None)) | (PromoCode.valid_until > now))
        .values(redemptions=PromoCode.redemptions + 1)
        .returning(PromoCode.redemptions)
    ).scalar_one_or_none()
    session.refresh(found)
    mine = select(PromoRedemption.id).where(PromoRedemption.promo_code_id == found.id,
                                            PromoRedemption.user_id == user_id)
    if session.scalar(mine) is not None:
        raise Conflict("this promo code was already redeemed by you",
                       code="promo_already_redeemed")
    if counted is None:
        if found.valid_until is not None and found.valid_until <= now:
            raise Conflict("this promo code has expired", code="promo_expired")
        raise Conflict("this promo code has been used up", code="promo_exhausted")
    expires_at = (now + timedelta(days=found.grant_validity_days)
                  if found.grant_validity_days else None)
    entry = ledger.post(
        session, user_id=user_id, amount=found.credits, kind="promo",
        reference_type="promo_code", reference_id=str(found.id),
        dedupe_key=f"promo:{found.id}:{user_id}", serialized=True,
        description=f"promo code {found.code}", expires_at=expires_at,
    )
    if entry is None or entry.grant_id is None:
        raise Conflict("this promo code was already redeemed by you",
                       code="promo_already_redeemed")
    session.add(PromoRedemption(promo_code_id=found.id, user_id=user_id, grant_id=entry.grant_id))
    session.flush()
    grant = session.get_one(CreditGrant, entry.grant_id)
    return Redemption(code=found, grant=grant, transaction_id=entry.id,
                      balance_after=entry.balance_after)
