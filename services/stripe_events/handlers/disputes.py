"""Dispute events: claw back on creation, give back on a won dispute, keep on a lost one."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services import settlement
from services.settlement import LockedPayment
from services.stripe_events.context import Event, Handler
from services.stripe_objects import Rejected, Skip, StripeObject, as_int, ref


def _payment(session: Session, dispute: StripeObject) -> LockedPayment:
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


def dispute_created(session: Session, event: Event) -> None:
    """A customer disputed a charge: the disputed share of the credits is taken back."""
    dispute_id, amount = _ids(event.object)
    settlement.open_dispute(
        session, _payment(session, event.object), dispute_id=dispute_id, amount_cents=amount
    )


def dispute_closed(session: Session, event: Event) -> None:
    """A dispute ended: won gives the credits back, lost keeps them taken."""
    status = event.object.get("status")
    if status not in ("won", "lost"):
        raise Skip(f"dispute closed as {status!r}: nothing to change")
    dispute_id, amount = _ids(event.object)
    settlement.close_dispute(
        session,
        _payment(session, event.object),
        dispute_id=dispute_id,
        amount_cents=amount,
        won=status == "won",
    )


HANDLERS: dict[str, Handler] = {
    "charge.dispute.created": dispute_created,
    "charge.dispute.closed": dispute_closed,
}
