"""Ledger integrity: every stored balance equals the sum of that user's ledger, and the
credits its grants hold less its debt (a negative balance is the debt; a user in debt holds
nothing in grants). A grant past its expiry counts until the sweep's ``expiry`` row takes its
remainder out, as it counts in the balance until then."""

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
           COALESCE(l.total, 0) AS ledger_sum, COALESCE(g.remaining, 0) AS grants_remaining
    FROM users u
    LEFT JOIN (
        SELECT user_id, SUM(amount)::bigint AS total FROM credit_transactions GROUP BY user_id
    ) l ON l.user_id = u.id
    LEFT JOIN (
        SELECT user_id, SUM(remaining)::bigint AS remaining FROM credit_grants GROUP BY user_id
    ) g ON g.user_id = u.id
    WHERE u.credit_balance <> COALESCE(l.total, 0)
       OR u.credit_balance <> COALESCE(g.remaining, 0) - GREATEST(-u.credit_balance, 0)
    ORDER BY u.id
    """
)


@dataclass(frozen=True)
class IntegrityReport:
    users_checked: int
    mismatches: list[dict[str, object]]


def check_ledger(session: Session) -> IntegrityReport:
    """Compare every user's stored balance with its ledger sum and its grants' remaining less
    its debt, and record the outcome."""
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
