"""Dispute events: claw back on a chargeback, give back when it is won, keep it when lost.

An inquiry (``warning_needs_response``, ``warning_under_review``) moves no money: nothing is
taken back unless it escalates to a chargeback (``charge.dispute.updated``). A dispute that
closes with no chargeback (``warning_closed``, ``prevented``) gives back whatever it took.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Payment
from services.payments import settlement
from services.payments.stripe_objects import Rejected, Skip, StripeObject, as_int, ref
from services.stripe_events.context import Event, Handler


def _payment(session: Session, dispute: StripeObject) -> Payment:
    payment = settlement.find_payment(
        session,
        payment_intent_id=ref(dispute.get("payment_intent")),
        charge_id=ref(dispute.get("charge")),
    )
    if payment is None:
        raise Skip(f"dispute {ref(dispute.get('id'))} is about no payment of ours")
    return payment


def _ids(dispute: StripeObject) -> tuple[str, int]:
    dispute_id, amount = ref(dispute.get("id")), as_int(dispute.get("amount"))
    if dispute_id is None or amount is None:
        raise Rejected("dispute without an id or amount")
    return dispute_id, amount


CHARGEBACK = frozenset({"needs_response", "under_review", "lost"})
RELEASED = frozenset({"warning_closed", "prevented"})


def dispute_opened(session: Session, event: Event) -> None:
    """A chargeback was opened (or an inquiry escalated): its share of the credits is taken."""
    status = event.object.get("status")
    if status not in CHARGEBACK:
        raise Skip(f"dispute is {status!r}: no chargeback, nothing taken back")
    dispute_id, amount = _ids(event.object)
    settlement.open_dispute(
        session, _payment(session, event.object), dispute_id=dispute_id, amount_cents=amount
    )


def dispute_closed(session: Session, event: Event) -> None:
    """A dispute ended: won (or no chargeback) gives the credits back, lost keeps them taken."""
    status = event.object.get("status")
    dispute_id, amount = _ids(event.object)
    if status in RELEASED:
        settlement.drop_dispute(session, _payment(session, event.object), dispute_id=dispute_id)
        return
    if status not in ("won", "lost"):
        raise Skip(f"dispute closed as {status!r}: nothing to change")
    settlement.close_dispute(
        session,
        _payment(session, event.object),
        dispute_id=dispute_id,
        amount_cents=amount,
        won=status == "won",
    )


HANDLERS: dict[str, Handler] = {
    "charge.dispute.created": dispute_opened,
    "charge.dispute.updated": dispute_opened,
    "charge.dispute.closed": dispute_closed,
}
