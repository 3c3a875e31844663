"""Handling balance crossings: low-balance alerts, ``credits.depleted`` and auto top-ups.

The trigger of migration 0006 writes a ``balance_crossings`` row in the very transaction of
the balance change that crossed a threshold (a spend, a capture, a batch, a refund...), so
each crossing is recorded exactly once, or not at all when that change rolled back. This
module turns the rows into their effects, each row in the transaction that marks it
handled: the webhook events are written there (the outbox), the mail and the top-up's
charge are enqueued after that commit. Rows are claimed with ``SKIP LOCKED``, so any number
of workers may run it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import BalanceCrossing, User
from services import task_queue
from services.topup import attempts
from services.webhooks import events
from settings import Settings

NOTIFY_TASK = "notices.send"
BATCH = 200

_CLAIM = (
    select(BalanceCrossing)
    .where(BalanceCrossing.handled_at.is_(None))
    .order_by(BalanceCrossing.id)
    .limit(BATCH)
    .with_for_update(skip_locked=True)
)


def _low(session: Session, settings: Settings, crossing: BalanceCrossing) -> None:
    threshold = session.scalar(select(User.low_balance_alert).where(User.id == crossing.user_id))
    events.emit(session, "credits.low", {
        "user_id": str(crossing.user_id), "balance": crossing.balance_after,
        "threshold": threshold,
    }, user_id=crossing.user_id)
    task_queue.enqueue(session, NOTIFY_TASK, "low_balance", str(crossing.id))


def _depleted(session: Session, settings: Settings, crossing: BalanceCrossing) -> None:
    events.emit(session, "credits.depleted", {
        "user_id": str(crossing.user_id), "balance": crossing.balance_after,
    }, user_id=crossing.user_id)


def _topup(session: Session, settings: Settings, crossing: BalanceCrossing) -> None:
    attempts.start(session, settings, user_id=crossing.user_id, balance=crossing.balance_after)


HANDLERS: dict[str, Callable[[Session, Settings, BalanceCrossing], None]] = {
    "low": _low,
    "depleted": _depleted,
    "topup": _topup,
}


def handle_pending(session: Session, settings: Settings) -> int:
    """Handle up to ``BATCH`` crossings not handled yet, oldest first; how many."""
    rows = list(session.scalars(_CLAIM))
    for crossing in rows:
        HANDLERS[crossing.kind](session, settings, crossing)
        crossing.handled_at = utc_now()
    session.flush()
    return len(rows)
