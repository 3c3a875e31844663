"""An operator's correction of a user's balance: through the ledger, audited in one transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db.models import User
from services.admin import audit
from services.credits import ledger
from services.errors import Conflict, InsufficientCredits, InvalidInput, NotFound

ACTION = "credits.adjust"
_LEDGER_DESCRIPTION_MAX = 500


@dataclass(frozen=True)
class Adjustment:
    user_id: uuid.UUID
    amount: int
    balance_before: int
    balance_after: int
    transaction_id: int
    audit_id: int


def adjust(
    session: Session,
    *,
    admin_id: uuid.UUID,
    user_id: uuid.UUID,
    amount: int,
    reason: str,
    request_id: str | None = None,
) -> Adjustment:
    """Add (or, when negative, take) ``amount`` credits and write the audit row with it.

    Refuses (409 ``negative_balance``) to take the balance below zero. The ledger entry and
    the ``admin_activity_log`` row are in the caller's transaction: both commit or neither.
    """
    if amount == 0 or abs(amount) > ledger.MAX_CREDITS:
        raise InvalidInput(
            f"amount must be non-zero and at most {ledger.MAX_CREDITS} either way",
            code="invalid_amount",
        )
    if not reason.strip():
        raise InvalidInput("a reason is required", code="reason_required")
    if session.get(User, user_id) is None:
        raise NotFound("no such user", code="user_not_found")
    try:
        entry = ledger.post(
            session,
            user_id=user_id,
            amount=amount,
            kind="admin_adjustment",
            reference_type="admin",
            reference_id=str(admin_id),
            description=reason[:_LEDGER_DESCRIPTION_MAX],
        )
    except InsufficientCredits as exc:
        raise Conflict(
            f"the adjustment would take the balance ({exc.details['balance']}) below zero",
            code="negative_balance",
            balance=exc.details["balance"],
        ) from None
    assert entry is not None  # no dedupe key, so never skipped
    # The ledger update is atomic, so the balance just before it is exactly this.
    before = entry.balance_after - amount
    trail = audit.record(
        session,
        admin_id=admin_id,
        target_user_id=user_id,
        action=ACTION,
        before={"balance": before},
        after={"balance": entry.balance_after, "amount": amount, "transaction_id": entry.id},
        reason=reason,
        request_id=request_id,
    )
    session.flush()
    return Adjustment(
        user_id=user_id,
        amount=amount,
        balance_before=before,
        balance_after=entry.balance_after,
        transaction_id=entry.id,
        audit_id=trail.id,
    )
