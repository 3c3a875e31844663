"""Where credits are granted and expire: the one place that announces it, exactly once.

Each grant made and each grant expired is announced once its cause committed, never for a
cause that rolled back, whatever the path: a purchase settled, a subscription invoice, an
admin bonus or positive adjustment, a promo code, a reinstated refund or dispute; an expiry
by the beat sweep, by the check on a read of the balance, or inside a spend's statement. An
announcement is a ``credits.granted`` / ``credits.expired`` outgoing webhook event (written
through the webhooks' transactional outbox, ``services.webhooks.events.emit``) and a log
line; the credits that expired are counted in the metrics here (``billing_credits_taken_back``
of kind ``expiry``), since no ``ledger.post`` counts them; grants are counted when posted.

Why derived from the ledger rows, not emitted by the code that causes them: grants are made
and expire inside the ledger's server-side function (``ledger_post`` / ``expire_grants``,
migration 0004). A spend that meets an expired grant lets it leave in its own statement,
sent from the event loop in one round trip with no ORM session: no Python code sees that
expiry. Emitting where Python sees the cause would need a second mechanism for the causes it
does not see, and two ways to one event are how events get lost or doubled. Every grant and
every expiry is a ledger row (a credit names the grant it made in ``grants``; an expiry is
one ``expiry`` row per grant, exactly once), so a trigger on ``credit_transactions``
(migration 0009) writes that row's id into ``grant_notices`` in the row's own transaction:
a notice exists if and only if its cause committed, whichever code (or script) wrote it.

``announce_pending`` claims notices with ``SKIP LOCKED``, writes each one's webhook event
and deletes the notice, in one transaction: a notice is announced once however many
sweeps run, at once or one after another, and a sweep that dies before its commit leaves
its notices to the next. The ledger row id (in the event's data as ``transaction_id``) is
the announcement's identity: the notice's primary key.

Why not tail ``credit_transactions`` past a stored cursor: ledger ids are taken when a row
is inserted, not when it commits, so a row can commit after a later id was read (a
settlement's transaction still open) and a cursor past it would miss it for good, unless
the tailer also waited on every older open transaction. A queue written by the same
transaction holds exactly what is pending, and needs no cursor.

The ``credits.announce`` task runs it on beat every ``BILLING_BALANCE_WATCH_INTERVAL_S``
(1 s), as the balance crossings' trigger-written queue is.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from services.monitoring import metrics
from services.webhooks import events as webhooks

log = logging.getLogger(__name__)

BATCH = 200
GRANTED = "credits.granted"
EXPIRED = "credits.expired"

# Claim (skipping those another sweep holds) and delete up to :limit notices, oldest first,
# with the ledger row and the grant each one is about. The grant's own terms (source,
# amount, priority, expiry) never change; what entered it (after any debt was paid) is the
# credit row's share in ``grants``.
_CLAIM = text(
    """
    WITH done AS (
        DELETE FROM grant_notices WHERE transaction_id IN (
            SELECT transaction_id FROM grant_notices
            ORDER BY transaction_id LIMIT :limit FOR UPDATE SKIP LOCKED)
        RETURNING transaction_id
    )
    SELECT t.id AS transaction_id, t.user_id, t.kind, t.amount, t.created_at,
           (t.grants->0->>'credits')::bigint AS credits,
           g.id AS grant_id, g.source, g.amount AS grant_amount, g.priority, g.expires_at
    FROM done
    JOIN credit_transactions t ON t.id = done.transaction_id
    JOIN credit_grants g ON g.id = (t.grants->0->>'grant_id')::bigint
    ORDER BY t.id
    """
)


def announce_pending(session: Session, *, limit: int = BATCH) -> int:
    """Announce up to ``limit`` grants made or expired and not announced yet; how many.

    In the caller's transaction: the webhook events are written and the notices deleted
    together, and the expired credits are counted once it commits."""
    rows = session.execute(_CLAIM, {"limit": limit}).all()
    for row in rows:
        event_type, data = _event(row)
        webhooks.emit(session, event_type, data, user_id=row.user_id)
        expired = event_type == EXPIRED
        credits = data["expired"] if expired else data["remaining"]
        if expired:
            metrics.credits_posted(session, "expiry", -credits)
        log.info("credits expired" if expired else "credits granted", extra={
            "user_id": str(row.user_id), "grant_id": row.grant_id, "credits": credits,
            "source": row.source, "transaction_id": row.transaction_id})
    return len(rows)


def _event(row: Any) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {
        "grant_id": row.grant_id,
        "user_id": str(row.user_id),
        "source": row.source,
        "amount": row.grant_amount,
        "priority": row.priority,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "transaction_id": row.transaction_id,
        "occurred_at": row.created_at.isoformat(),
    }
    if row.kind == "expiry":
        return EXPIRED, {**data, "expired": -row.amount}
    return GRANTED, {**data, "remaining": row.credits}
