"""Ledger integrity: every stored balance equals the sum of that user's ledger."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import IntegrityCheck

log = logging.getLogger(__name__)

_MISMATCHES = text(
    """
    SELECT u.id::text AS user_id, u.credit_balance AS stored,
           COALESCE(l.total, 0) AS ledger_sum
    FROM users u
    LEFT JOIN (
        SELECT user_id, SUM(amount)::bigint AS total FROM credit_transactions GROUP BY user_id
    ) l ON l.user_id = u.id
    WHERE u.credit_balance <> COALESCE(l.total, 0)
    ORDER BY u.id
    """
)


@dataclass(frozen=True)
class IntegrityReport:
    users_checked: int
    mismatches: list[dict[str, object]]


def check_ledger(session: Session) -> IntegrityReport:
    """Compare every user's stored balance with its ledger sum and record the outcome."""
    users = session.execute(text("SELECT count(*) FROM users")).scalar_one()
    mismatches = [dict(row._mapping) for row in session.execute(_MISMATCHES)]
    for row in mismatches:
        log.error("ledger mismatch", extra=row)
    session.add(
        IntegrityCheck(
            users_checked=users, mismatches=len(mismatches), details=mismatches[:100] or None
        )
    )
    session.flush()
    return IntegrityReport(users_checked=users, mismatches=mismatches)
