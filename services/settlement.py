"""Settling payments from Stripe's word: grants, failures, refunds and disputes, each once.

Every function here works on a payment row locked ``FOR UPDATE`` by ``find_payment``,
so two events about one payment are applied one after the other, never interleaved.
Credits move only through ``services.ledger`` with a dedupe key per cause, so an event
delivered twice, late or out of order moves money at most once:

- the purchase grant: ``payment:<payment id>`` (whichever success event comes first);
- refunds: cumulative, from the payment's refunded amount, ``refund:<payment id>:<level>``;
- disputes: ``dispute:<dispute id>`` and ``dispute_reversal:<dispute id>``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import CreditTransaction, Payment
from services import ledger
from services.ledger import Entry
from services.stripe_objects import NotReady, Rejected, Skip

GRANTED = frozenset({"succeeded", "partially_refunded", "refunded"})
# A payment that was never paid may still become paid (a retried card); these never change.
FINAL_UNPAID = frozenset({"canceled"})


def find_payment(
    session: Session,
    *,
    payment_id: uuid.UUID | None = None,
    checkout_session_id: str | None = None,
    payment_intent_id: str | None = None,
    charge_id: str | None = None,
    invoice_id: str | None = None,
) -> Payment | None:
    """The payment an event is about, locked for update; None when it is not ours.

    Our metadata (``payment_id``) wins; Stripe ids are the fallback. A payment id in the
    metadata whose row is not visible yet raises ``NotReady`` (its transaction may not
    have committed when the event arrived).
    """
    if payment_id is not None:
        payment = session.scalar(
            select(Payment).where(Payment.id == payment_id).with_for_update()
        )
        if payment is None:
            raise NotReady(f"payment {payment_id} named in the metadata does not exist (yet)")
        return payment
    conditions = []
    if checkout_session_id:
        conditions.append(Payment.stripe_checkout_session_id == checkout_session_id)
    if payment_intent_id:
        conditions.append(Payment.stripe_payment_intent_id == payment_intent_id)
    if charge_id:
        conditions.append(Payment.stripe_charge_id == charge_id)
    if invoice_id:
        conditions.append(Payment.stripe_invoice_id == invoice_id)
    if not conditions:
        return None
    return session.scalars(
        select(Payment).where(or_(*conditions)).order_by(Payment.created_at).with_for_update()
    ).first()


def link(
    payment: Payment,
    *,
    checkout_session_id: str | None = None,
    payment_intent_id: str | None = None,
    charge_id: str | None = None,
) -> None:
    """Remember Stripe ids we learn from events (never overwriting one already known)."""
    if checkout_session_id and payment.stripe_checkout_session_id is None:
        payment.stripe_checkout_session_id = checkout_session_id
    if payment_intent_id and payment.stripe_payment_intent_id is None:
        payment.stripe_payment_intent_id = payment_intent_id
    if charge_id and payment.stripe_charge_id is None:
        payment.stripe_charge_id = charge_id


def settle(
    session: Session,
    payment: Payment,
    *,
    amount_cents: int | None,
    currency: str | None,
) -> Entry | None:
    """Mark ``payment`` paid and grant its credits once; None when it was granted before.

    Refunds recorded before the success (events out of order) are applied right after
    the grant, so the final balance does not depend on the order of arrival.
    """
    if payment.flow == "subscription":
        raise Skip("subscription payments are granted by their invoice events")
    if amount_cents is not None and amount_cents < payment.amount_cents:
        raise Rejected(
            f"payment {payment.id} expects {payment.amount_cents} but Stripe reports {amount_cents}"
        )
    if currency is not None and currency != payment.currency:
        raise Rejected(
            f"payment {payment.id} expects {payment.currency} but Stripe reports {currency}"
        )
    if payment.status in GRANTED:
        return None
    payment.status = "succeeded"
    payment.succeeded_at = utc_now()
    payment.failure_reason = None
    entry = ledger.post(
        session,
        user_id=payment.user_id,
        amount=payment.credits,
        kind="purchase",
        reference_type="payment",
        reference_id=str(payment.id),
        dedupe_key=f"payment:{payment.id}",
        description=f"{payment.credits} credits ({payment.package_id or 'purchase'})",
    )
    _apply_refunds(session, payment)
    session.flush()
    return entry


def fail(payment: Payment, *, reason: str | None) -> bool:
    """Mark an unpaid payment failed (a success is never undone); True when it changed."""
    if payment.status in GRANTED or payment.status in FINAL_UNPAID or payment.status == "expired":
        return False
    payment.status = "failed"
    payment.failure_reason = (reason or "payment failed")[:500]
    return True


def expire(payment: Payment) -> bool:
    """Mark a still-pending payment expired (its Checkout Session lapsed); True when it changed."""
    if payment.status != "pending":
        return False
    payment.status = "expired"
    return True


def record_refund(session: Session, payment: Payment, *, refunded_cents: int) -> None:
    """Record that ``refunded_cents`` of ``payment`` are refunded in total and take back credits.

    ``refunded_cents`` is Stripe's cumulative figure (``charge.amount_refunded``), so the
    same or an older event changes nothing and refunds never add up past the payment.
    """
    total = max(0, min(refunded_cents, payment.amount_cents))
    if total > payment.refunded_cents:
        payment.refunded_cents = total
    _apply_refunds(session, payment)
    session.flush()


def open_dispute(session: Session, payment: Payment, *, dispute_id: str, amount_cents: int) -> None:
    """Claw back the disputed share of the payment's credits (once per dispute)."""
    if payment.dispute_status == "won":
        return  # the dispute already closed in our favour: this is a stale event
    _claw_back(session, payment, dispute_id=dispute_id, amount_cents=amount_cents)
    if payment.dispute_status is None:
        payment.dispute_status = "open"
    session.flush()


def close_dispute(
    session: Session, payment: Payment, *, dispute_id: str, amount_cents: int, won: bool
) -> None:
    """A won dispute gives the clawed-back credits back; a lost one keeps them taken."""
    if won:
        clawed = session.scalar(
            select(CreditTransaction.amount).where(
                CreditTransaction.dedupe_key == f"dispute:{dispute_id}"
            )
        )
        if clawed is not None:
            ledger.post(
                session,
                user_id=payment.user_id,
                amount=-clawed,
                kind="dispute_reversal",
                reference_type="payment",
                reference_id=str(payment.id),
                dedupe_key=f"dispute_reversal:{dispute_id}",
                description=f"dispute {dispute_id} won",
            )
        payment.dispute_status = "won"
    else:
        _claw_back(session, payment, dispute_id=dispute_id, amount_cents=amount_cents)
        payment.dispute_status = "lost"
    session.flush()


def _share(credits: int, part_cents: int, whole_cents: int) -> int:
    """The credits that ``part_cents`` of ``whole_cents`` paid for (all of them for the whole)."""
    if whole_cents <= 0 or part_cents >= whole_cents:
        return credits if part_cents > 0 else 0
    return credits * part_cents // whole_cents


def _apply_refunds(session: Session, payment: Payment) -> None:
    if payment.status not in GRANTED or payment.refunded_cents == 0:
        return
    target = min(
        payment.credits, _share(payment.credits, payment.refunded_cents, payment.amount_cents)
    )
    delta = target - payment.credits_refunded
    if delta > 0:
        # The user may have spent them already: the balance may go negative as a recorded
        # debt, and the ledger refuses spending until it is positive again.
        ledger.post(
            session,
            user_id=payment.user_id,
            amount=-delta,
            kind="refund",
            reference_type="payment",
            reference_id=str(payment.id),
            dedupe_key=f"refund:{payment.id}:{target}",
            description=f"refund of {payment.refunded_cents} {payment.currency} minor units",
            may_overdraw=True,
        )
        payment.credits_refunded = target
    full = payment.refunded_cents >= payment.amount_cents
    payment.status = "refunded" if full else "partially_refunded"


def _claw_back(session: Session, payment: Payment, *, dispute_id: str, amount_cents: int) -> None:
    if payment.status not in GRANTED:
        raise NotReady(f"payment {payment.id} is disputed but not settled yet")
    credits = min(
        _share(payment.credits, amount_cents, payment.amount_cents),
        payment.credits - payment.credits_refunded,
    )
    if credits <= 0:
        return
    ledger.post(
        session,
        user_id=payment.user_id,
        amount=-credits,
        kind="dispute",
        reference_type="payment",
        reference_id=str(payment.id),
        dedupe_key=f"dispute:{dispute_id}",
        description=f"dispute {dispute_id}",
        may_overdraw=True,
    )
