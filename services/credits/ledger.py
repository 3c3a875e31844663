"""The ledger: the one place in the code that changes a credit balance.

Every change is one SQL statement that updates the user's balance (and the
purchased/used totals) and appends the ``credit_transactions`` row carrying the
resulting ``balance_after``: the stored balance always equals the ledger sum.
Credits are held in grants (``credit_grants``): a credit makes one, a debit burns them by
priority, soonest expiry, then age, and expired remainders leave through ``expiry`` rows;
for every user, balance = sum of the grants' remaining − debt (a negative balance). The
statement is a server-side function (migration 0004, aware of holds since 0005) that takes
the user's row lock first, so concurrent spends queue there and cannot overspend; a debit
that must not overdraw and is not covered by the available credits (the balance less the
active holds, ``users.held_credits``) changes nothing. A ``dedupe_key`` (unique in the
ledger) makes a change happen at most once per cause.

Two ways in, one statement: ``spend`` (usage, from the event loop through ``db.aio``: the
spend route, with or without an ``Idempotency-Key``) and ``post`` (every other change, in
a worker's or a request's ORM session: grants, refunds, disputes, adjustments).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import psycopg
from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.models import CreditTransaction, User
from services.errors import Conflict, InsufficientCredits, InvalidInput, NotFound, Unauthorized
from services.monitoring import metrics

# Kinds that move the "purchased" total, and the one that moves "used".
PURCHASED_KINDS = frozenset(
    {"purchase", "subscription_grant", "refund", "dispute", "dispute_reversal",
     "refund_reversal"}
)
USAGE_KIND = "usage"
HOLD_CAPTURE_KIND = "hold_capture"
# Kinds that move the "used" total: usage, and a hold's capture (usage settled late).
USED_KINDS = frozenset({USAGE_KIND, HOLD_CAPTURE_KIND})
MAX_CREDITS = 2**31 - 1
# The grant a credit of each kind makes, and its default priority (lower burns first).
GRANT_SOURCE = {
    "purchase": "purchase",
    "subscription_grant": "subscription",
    "bonus": "bonus",
    "promo": "promo",
    "admin_adjustment": "admin",
    "dispute_reversal": "purchase",
    "refund_reversal": "purchase",
}
DEFAULT_PRIORITY = {"promo": 10, "bonus": 10, "subscription": 20, "purchase": 30, "admin": 30}

# Every change is this one call of the server-side function of migrations 0004 and 0005: it
# locks the user's row, lets expired grants leave (their ``expiry`` rows), refuses a debit
# the available credits (balance less holds) do not cover, burns grants (or makes the
# credit's grant), updates the balance (and the held credits: a capture closes its hold) and
# appends the ledger row with the grants it changed. One statement, one round trip.
_POST = text(
    """
    SELECT id, balance_after, created_at, grant_id FROM ledger_post(
        CAST(:user_id AS uuid), CAST(:amount AS bigint), CAST(:kind AS text),
        CAST(:purchased_delta AS bigint), CAST(:used_delta AS bigint),
        CAST(:may_overdraw AS boolean), CAST(:active_only AS boolean),
        CAST(:reference_type AS text), CAST(:reference_id AS text), CAST(:dedupe_key AS text),
        CAST(:description AS text), CAST(:endpoint AS text), CAST(:source AS text),
        CAST(:priority AS integer), CAST(:expires_at AS timestamptz),
        CAST(:prefer_type AS text), CAST(:prefer_id AS text),
        CAST(:held_delta AS bigint))
    """
)
# Why a spend changed nothing: the account's state and, if its dedupe key was applied
# already, the entry that applied it.
_SPEND_REFUSED = text(
    """
    SELECT u.credit_balance, u.held_credits, u.is_active, t.id, t.amount, t.balance_after,
           t.created_at, t.description, t.endpoint
    FROM users u
    LEFT JOIN credit_transactions t
           ON t.dedupe_key = CAST(:dedupe_key AS text) AND t.user_id = u.id
    WHERE u.id = :user_id
    """
)
_DEDUPE_INDEX = "uq_credit_transactions_dedupe_key"


@dataclass(frozen=True)
class Entry:
    """A ledger row as written; ``replayed``: written before, by the first try of the cause."""

    id: int
    user_id: uuid.UUID
    amount: int
    kind: str
    balance_after: int
    created_at: datetime
    replayed: bool = False
    grant_id: int | None = None  # the grant a credit made


def post(
    session: Session,
    *,
    user_id: uuid.UUID,
    amount: int,
    kind: str,
    reference_type: str | None = None,
    reference_id: str | None = None,
    dedupe_key: str | None = None,
    description: str | None = None,
    endpoint: str | None = None,
    may_overdraw: bool = False,
    serialized: bool = False,
    expires_at: datetime | None = None,
    priority: int | None = None,
    prefer: tuple[str, str] | None = None,
    held_delta: int = 0,
) -> Entry | None:
    """Apply ``amount`` to the balance and append its ledger row.

    A credit makes a grant (its source from ``kind``, ``priority`` by default the source's,
    lapsing at ``expires_at``); a debit burns the user's grants, those referenced by
    ``prefer`` (reference type, id) first. Returns ``None`` when ``dedupe_key`` was already
    applied (nothing changes).
    Raises ``InsufficientCredits`` when a debit would take the balance below zero
    and ``may_overdraw`` is false (refunds and disputes may record a debt): a debit takes
    only what is available, the balance less the active holds. ``held_delta``: the change
    to the held credits in the same statement (a hold's capture closes the hold).

    The statement itself skips a ``dedupe_key`` already applied. ``serialized``: the
    caller holds a lock that orders every post of the key (settlement holds the payment's
    row), so no twin can be in flight and that is all it takes. Without it, a twin may be
    in flight and commit first: the statement runs in a savepoint and the unique index
    decides. Either way a key is applied at most once (the index backs both).
    """
    params = _params(
        user_id=user_id,
        amount=amount,
        kind=kind,
        may_overdraw=may_overdraw,
        reference_type=reference_type,
        reference_id=reference_id,
        dedupe_key=dedupe_key,
        description=description,
        endpoint=endpoint,
        expires_at=expires_at,
        priority=priority,
        prefer=prefer,
        held_delta=held_delta,
    )
    if dedupe_key is None or serialized:
        row = session.execute(_POST, params).one_or_none()
    else:
        try:
            with session.begin_nested():
                row = session.execute(_POST, params).one_or_none()
        except IntegrityError as exc:
            if _DEDUPE_INDEX in str(exc.orig):
                return None
            raise
    if row is None:
        # The statement changed nothing: its key was applied (before, or by a twin that
        # committed while this one waited for the user's row), or the balance is short.
        if dedupe_key is not None and applied(session, dedupe_key):
            return None
        _refuse(session, user_id=user_id, amount=amount)
    _sync(session, user_id)
    metrics.credits_posted(session, kind, amount)
    return _entry(row, user_id=user_id, amount=amount, kind=kind)


async def spend(
    db: AsyncDatabase,
    *,
    user_id: uuid.UUID,
    credits: int,
    description: str | None = None,
    endpoint: str | None = None,
    dedupe_key: str | None = None,
    then: tuple[TextClause, dict[str, Any]] | None = None,
    token: tuple[str, str | None] | None = None,
) -> Entry:
    """Take ``credits`` from an active user's balance for usage: the one way to spend.

    One statement, its own transaction, one round trip when it succeeds (the statement is
    ``post``'s, sent with the user's security context). Raises ``InsufficientCredits`` when
    the balance is short and ``NotFound`` when the user does not exist or is deactivated;
    nothing changes then. With ``dedupe_key`` the spend happens at most once: a retry gets
    the first spend's entry back (``replayed``), even while racing it, and the key reused
    for a different spend is a ``Conflict``. The spend takes only what is available (the
    balance less the active holds). ``then``: one more statement for the same transaction,
    after the spend (an API key's spend counters); if it fails, the spend is undone and its
    error raised. ``token``: the (jti, sid) of the access token that asks
    (``tokens.revocation_keys_for_statement``), checked against the sign-outs in the same
    round trip; a signed-out one is ``Unauthorized`` and nothing changes.
    """
    _check_credits(credits)
    amount = -credits
    params = _params(
        user_id=user_id, amount=amount, kind=USAGE_KIND, description=description,
        endpoint=endpoint, dedupe_key=dedupe_key, active_only=True,
    )
    try:
        row = await db.fetchone(_POST, params, scope="user", user_id=user_id, then=then,
                                token=token)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != _DEDUPE_INDEX:
            raise
        row = None  # a twin with the same key committed while this one waited: replay it
    except psycopg.errors.InvalidAuthorizationSpecification:
        raise _signed_out() from None
    if row is not None:
        metrics.spent(credits)
        return _entry(row, user_id=user_id, amount=amount, kind=USAGE_KIND)
    try:
        # Checked again: a replay answers with the first spend's entry, which a token signed
        # out since must not read either.
        state = await db.fetchone(_SPEND_REFUSED, {"user_id": user_id, "dedupe_key": dedupe_key},
                                  scope="user", user_id=user_id, token=token)
    except psycopg.errors.InvalidAuthorizationSpecification:
        raise _signed_out() from None
    if state is None or not state.is_active:
        raise NotFound("no such user", code="user_not_found")
    if state.id is None:
        metrics.insufficient_credits("spend")
        raise _insufficient(state.credit_balance, amount, held=state.held_credits)
    if (state.amount, state.description, state.endpoint) != (amount, description, endpoint):
        raise Conflict("this key was already used for a different spend (credits, "
                       "description or endpoint)", code="idempotency_key_reused")
    return Entry(id=state.id, user_id=user_id, amount=amount, kind=USAGE_KIND,
                 balance_after=state.balance_after, created_at=state.created_at, replayed=True)


def _signed_out() -> Unauthorized:
    return Unauthorized("access token was signed out", code="token_revoked")


_APPLIED = select(CreditTransaction.id).where(
    CreditTransaction.dedupe_key == bindparam("dedupe_key")
)


def applied(session: Session, dedupe_key: str) -> bool:
    """True when a ledger entry with ``dedupe_key`` exists."""
    return session.scalar(_APPLIED, {"dedupe_key": dedupe_key}) is not None


def balance(session: Session, user_id: uuid.UUID) -> int:
    """The stored balance of ``user_id`` (read from the database, not the identity map)."""
    value = session.scalar(select(User.credit_balance).where(User.id == user_id))
    if value is None:
        raise NotFound("no such user", code="user_not_found")
    return value


def _refuse(session: Session, *, user_id: uuid.UUID, amount: int) -> NoReturn:
    held = session.scalar(select(User.held_credits).where(User.id == user_id)) or 0
    raise _insufficient(balance(session, user_id), amount, held=held)


def _insufficient(current: int, amount: int, *, held: int = 0) -> InsufficientCredits:
    if held:
        return InsufficientCredits(
            f"available {current - held} (balance {current}, {held} held) cannot cover "
            f"{-amount} credits", balance=current, available=current - held, required=-amount
        )
    return InsufficientCredits(
        f"balance {current} cannot cover {-amount} credits", balance=current, required=-amount
    )


def _check_credits(credits: int) -> None:
    if not 0 < credits <= MAX_CREDITS:
        raise InvalidInput(f"credits must be between 1 and {MAX_CREDITS}", code="invalid_credits")


def _params(
    *,
    user_id: uuid.UUID,
    amount: int,
    kind: str,
    may_overdraw: bool = False,
    active_only: bool = False,
    reference_type: str | None = None,
    reference_id: str | None = None,
    dedupe_key: str | None = None,
    description: str | None = None,
    endpoint: str | None = None,
    expires_at: datetime | None = None,
    priority: int | None = None,
    prefer: tuple[str, str] | None = None,
    held_delta: int = 0,
) -> dict[str, object]:
    if amount == 0:
        raise InvalidInput("a ledger entry cannot be zero", code="zero_amount")
    source = GRANT_SOURCE.get(kind) if amount > 0 else None
    if amount > 0 and source is None:
        raise ValueError(f"a {kind!r} entry cannot credit an account")
    return {
        "user_id": user_id,
        "amount": amount,
        "kind": kind,
        "purchased_delta": amount if kind in PURCHASED_KINDS else 0,
        "used_delta": -amount if kind in USED_KINDS else 0,
        "held_delta": held_delta,
        "may_overdraw": may_overdraw,
        "active_only": active_only,
        "reference_type": reference_type,
        "reference_id": reference_id,
        "dedupe_key": dedupe_key,
        "description": description,
        "endpoint": endpoint,
        "source": source,
        "priority": (DEFAULT_PRIORITY[source] if priority is None else priority)
        if source else None,
        "expires_at": expires_at,
        "prefer_type": prefer[0] if prefer else None,
        "prefer_id": prefer[1] if prefer else None,
    }


def _entry(row: Any, *, user_id: uuid.UUID, amount: int, kind: str) -> Entry:
    return Entry(
        id=row.id,
        user_id=user_id,
        amount=amount,
        kind=kind,
        balance_after=row.balance_after,
        created_at=row.created_at,
        grant_id=row.grant_id,
    )


def _sync(session: Session, user_id: uuid.UUID) -> None:
    """Expire a loaded ``User`` so its balance is re-read after the SQL-level update.

    The one statement is the ledger's point (no row lock, no second round trip), so the
    ORM cannot know what it changed; a request that loaded its user must not see an old
    balance."""
    user = session.identity_map.get(session.identity_key(User, user_id))
    if user is not None:
        session.expire(user, ["credit_balance", "held_credits", "credits_purchased",
                              "credits_used"])


def forget_balance(session: Session, user_id: uuid.UUID) -> None:
    """Make a loaded ``User`` re-read its balance after a change made by SQL outside ``post``."""
    _sync(session, user_id)
