"""An API key's daily and monthly spend limits, applied in the spend's own transaction.

Each key has one counter row per UTC day and per UTC month (``api_key_spend``) holding what
it spent and its cap, and the table checks ``spent <= cap``. The counter statement runs
right after the spend, in its transaction, and counts only a ledger row that transaction
wrote (a replayed spend is not counted twice): a spend past a limit fails the check, and
the spend is undone with it. The counter row's lock orders concurrent spends of one key,
so the key never spends more than its limit.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import TextClause, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.apikeys.keys import KeyInfo
from services.errors import InsufficientCredits

CAP_CHECK = "ck_api_key_spend_within_cap"

_CHARGE = text(
    """
    INSERT INTO api_key_spend AS s (key_id, user_id, period, spent, cap)
    SELECT :key_id, :user_id, p.period, :credits, p.cap
    FROM (VALUES ('d' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                  CAST(:daily_limit AS bigint)),
                 ('m' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM'),
                  CAST(:monthly_limit AS bigint))) AS p(period, cap)
    WHERE p.cap IS NOT NULL
      AND EXISTS (SELECT 1 FROM credit_transactions t
                  WHERE t.dedupe_key = :dedupe_key AND t.xmin = pg_current_xact_id()::xid)
    ON CONFLICT (key_id, period) DO UPDATE SET spent = s.spent + excluded.spent,
                                               cap = excluded.cap
    """
)


class KeyLimitReached(InsufficientCredits):
    code = "key_limit_reached"


def charge(key: KeyInfo, *, credits: int, dedupe_key: str) -> tuple[TextClause, dict[str, Any]]:
    """The counter statement for a spend of ``credits`` whose ledger row has ``dedupe_key``."""
    return _CHARGE, {
        "key_id": key.id, "user_id": key.user_id, "credits": credits,
        "daily_limit": key.daily_limit, "monthly_limit": key.monthly_limit,
        "dedupe_key": dedupe_key,
    }


def charge_in(session: Session, key: KeyInfo, *, credits: int, dedupe_key: str) -> None:
    """Apply the counter statement in ``session``'s transaction (after its spend)."""
    statement, params = charge(key, credits=credits, dedupe_key=dedupe_key)
    try:
        session.execute(statement, params)
    except IntegrityError as exc:
        if CAP_CHECK in str(exc.orig):
            raise limit_reached(key, credits) from None
        raise


def is_limit_error(exc: BaseException) -> bool:
    """True when a database error is a key's counter refusing to pass its cap."""
    return (isinstance(exc, psycopg.errors.CheckViolation)
            and exc.diag.constraint_name == CAP_CHECK)


def limit_reached(key: KeyInfo, credits: int) -> KeyLimitReached:
    limits = ", ".join(
        f"{name} {value}" for name, value in
        (("daily", key.daily_limit), ("monthly", key.monthly_limit)) if value is not None
    )
    return KeyLimitReached(
        f"this API key cannot spend {credits} more credits within its limits ({limits})",
        required=credits, daily_limit=key.daily_limit, monthly_limit=key.monthly_limit,
    )
