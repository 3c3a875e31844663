"""Settling payments from Stripe's word: grants, failures, refunds and disputes, each once.

Every function here works on a payment row locked ``FOR UPDATE`` by ``find_payment`` (and
read afresh with it), so two events about one payment are applied one after the other,
never interleaved.
Credits move only through ``services.credits.ledger`` with a dedupe key per cause, so an event
delivered twice, late or out of order moves money at most once:

- the purchase grant: ``payment:<payment id>`` (whichever success event comes first);
- refunds: cumulative, from the payment's refunded amount, ``refund:<payment id>:<level>``
  (``…:<level>:<n>`` after ``n`` refund reversals, so a level can be taken again);
- a refund that failed or was canceled after it was counted: ``refund_reversal:<refund id>``;
- disputes: ``dispute:<dispute id>`` and ``dispute_reversal:<dispute id>``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import CreditTransaction, Payment, StripeRefund, User
from services.credits import grants, ledger
from services.credits.ledger import Entry
from services.payments.stripe_objects import NotReady, Rejected, Skip

GRANTED = frozenset({"succeeded", "partially_refunded", "refunded"})
# A payment that was never paid may still become paid (a retried card); these never change.
FINAL_UNPAID = frozenset({"canceled"})
# A refund in one of these states gives back what it took and never counts again.
REFUND_ENDED = frozenset({"failed", "canceled"})


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
        payment = session.scalars(_BY_ID, {"payment_id": payment_id}).first()
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
    return _locked(session, or_(*conditions))


def _locked(session: Session, condition: Any) -> Payment | None:
    return session.scalars(
        _LOCKED.where(condition).order_by(Payment.created_at).limit(1)
    ).first()


# populate_existing: the locked row's current values, even over a copy loaded earlier. Built
# once: the event pipeline's common case (our payment id in the metadata) reuses it as is.
_LOCKED = select(Payment).with_for_update().execution_options(populate_existing=True)
_BY_ID = _LOCKED.where(Payment.id == bindparam("payment_id"))


def link(
    payment: Payment,
    *,
    checkout_session_id: str | None = None,
    payment_intent_id: str | None = None,
    charge_id: str | None = None,
) -> None:
    """Remember Stripe ids we learn from events (never overwriting one already known).

    An event whose Checkout Session or PaymentIntent is not the one the payment already
    has is about another payment (metadata naming someone else's): ``Rejected``. Charges
    may differ (a declined attempt's, then the successful one's).
    """
    for known, told in ((payment.stripe_checkout_session_id, checkout_session_id),
                        (payment.stripe_payment_intent_id, payment_intent_id)):
        if known is not None and told is not None and known != told:
            raise Rejected(f"payment {payment.id} is linked to {known}, the event names {told}")
    if checkout_session_id and payment.stripe_checkout_session_id is None:
        payment.stripe_checkout_session_id = checkout_session_id
    if payment_intent_id and payment.stripe_payment_intent_id is None:
        payment.stripe_payment_intent_id = payment_intent_id
    if charge_id and payment.stripe_charge_id is None:
        payment.stripe_charge_id = charge_id


def check_customer(session: Session, payment: Payment, *, customer: str | None) -> None:
    """``Rejected`` when the event's Stripe customer is not the payment's user's."""
    if customer is None:
        return
    own = session.scalar(select(User.stripe_customer_id).where(User.id == payment.user_id))
    if own is not None and own != customer:
        raise Rejected(f"payment {payment.id} belongs to {own}, the event to {customer}")


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
    if amount_cents is None or currency is None:
        raise Rejected(f"payment {payment.id} succeeded without an amount or a currency")
    if amount_cents < payment.amount_cents:
        raise Rejected(
            f"payment {payment.id} expects {payment.amount_cents} but Stripe reports {amount_cents}"
        )
    if currency != payment.currency:
        raise Rejected(
            f"payment {payment.id} expects {payment.currency} but Stripe reports {currency}"
        )
    if payment.status in GRANTED:
        return None
    payment.status = "succeeded"
    payment.succeeded_at = utc_now()
    payment.failure_reason = None
    validity = payment.validity_days
    entry = ledger.post(
        session,
        user_id=payment.user_id,
        amount=payment.credits,
        kind="purchase",
        expires_at=utc_now() + timedelta(days=validity) if validity else None,
        reference_type="payment",
        reference_id=str(payment.id),
        dedupe_key=f"payment:{payment.id}",
        serialized=True,  # the payment's row is locked: no twin can be in flight
        description=f"{payment.credits} credits ({payment.package_id or 'purchase'})",
    )
    _apply_refunds(session, payment)
    return entry


def fail(session: Session, payment: Payment, *, reason: str | None) -> bool:
    """Mark an unpaid payment failed (a success is never undone); True when it changed."""
    changed = not (
        payment.status in GRANTED or payment.status in FINAL_UNPAID or payment.status == "expired"
    )
    if changed:
        payment.status = "failed"
        payment.failure_reason = (reason or "payment failed")[:500]
    return changed


def expire(session: Session, payment: Payment) -> bool:
    """Mark a still-pending payment expired (its Checkout Session lapsed); True when it changed."""
    changed = payment.status == "pending"
    if changed:
        payment.status = "expired"
    return changed


def record_refund(session: Session, payment: Payment, *, refunded_cents: int) -> None:
    """Record that ``refunded_cents`` of ``payment`` are refunded in total and take back credits.

    ``refunded_cents`` is Stripe's cumulative figure (``charge.amount_refunded``), so the
    same or an older event changes nothing and refunds never add up past the payment.
    """
    total = max(0, min(refunded_cents, payment.amount_cents))
    if total > payment.refunded_cents:
        payment.refunded_cents = total
    _apply_refunds(session, payment)


def refund_ended(session: Session, refund_id: str) -> bool:
    """True when refund ``refund_id`` is known to have failed or been canceled."""
    status = session.scalar(select(StripeRefund.status).where(StripeRefund.id == refund_id))
    return status in REFUND_ENDED


def note_refund(session: Session, payment: Payment, *, refund_id: str, amount_cents: int) -> None:
    """Remember that refund ``refund_id`` is counted in ``payment.refunded_cents`` (Stripe's
    ``amount_refunded`` counts pending and succeeded refunds), so its failure gives it back."""
    if session.get(StripeRefund, refund_id, populate_existing=True) is None:
        session.add(StripeRefund(id=refund_id, payment_id=payment.id,
                                 amount_cents=max(0, amount_cents), counted=True,
                                 status="counted"))
        session.flush()


def end_refund(
    session: Session, payment: Payment, *, refund_id: str, amount_cents: int, status: str
) -> Entry | None:
    """Refund ``refund_id`` failed or was canceled: give back what it took, once.

    Only a refund that was counted gives anything back; one that ends before it was counted
    is recorded as ended, so that its late ``refund.created`` never takes credits. The
    payment's ``refunded_cents`` and ``credits_refunded`` go down with it, so a later genuine
    refund can still take back at most what the payment granted.
    """
    row = session.get(StripeRefund, refund_id, populate_existing=True)
    if row is not None and row.status in REFUND_ENDED:
        return None  # ended before: this is a repeat
    counted = row is not None and row.counted
    if row is None:
        row = StripeRefund(id=refund_id, payment_id=payment.id,
                           amount_cents=max(0, amount_cents), counted=False, status=status)
        session.add(row)
    row.status = status
    session.flush()
    if not counted:
        return None
    payment.refunded_cents = max(0, payment.refunded_cents - row.amount_cents)
    if payment.status not in GRANTED:
        return None  # nothing was taken yet: the grant will see the lower figure
    target = _refund_target(session, payment) if payment.refunded_cents else 0
    back = payment.credits_refunded - target
    entry = None
    if back > 0:
        entry = _move_credits(session, payment, back, kind="refund_reversal",
                              dedupe_key=f"refund_reversal:{refund_id}",
                              description=f"refund {refund_id} {status}, credits returned")
        payment.credits_refunded = target
    if payment.refunded_cents == 0:
        payment.status = "succeeded"
    else:
        full = payment.refunded_cents >= payment.amount_cents
        payment.status = "refunded" if full else "partially_refunded"
    return entry


def open_dispute(
    session: Session, payment: Payment, *, dispute_id: str, amount_cents: int
) -> None:
    """A chargeback: claw back the disputed share of the payment's credits (once per dispute).

    An inquiry (``warning_*``: the issuer only asks, no money moves) is no chargeback and
    does not come here until it escalates.
    """
    if payment.dispute_status != "won":  # won: the dispute already closed, this one is stale
        _claw_back(session, payment, dispute_id=dispute_id, amount_cents=amount_cents)
        if payment.dispute_status is None:
            payment.dispute_status = "open"


def close_dispute(
    session: Session, payment: Payment, *, dispute_id: str, amount_cents: int, won: bool
) -> None:
    """A won dispute gives the clawed-back credits back; a lost one keeps them taken."""
    if won:
        _release(session, payment, dispute_id=dispute_id)
        payment.dispute_status = "won"
    else:
        _claw_back(session, payment, dispute_id=dispute_id, amount_cents=amount_cents)
        payment.dispute_status = "lost"


def drop_dispute(session: Session, payment: Payment, *, dispute_id: str) -> None:
    """A dispute ended with no chargeback (an inquiry closed, or prevented): give back
    whatever it took. Unlike a won dispute, it leaves no mark on the payment, so a later
    chargeback of the same payment is still taken back."""
    _release(session, payment, dispute_id=dispute_id)


def _release(session: Session, payment: Payment, *, dispute_id: str) -> None:
    """Give back what dispute ``dispute_id`` took (once), then the refunds it held down."""
    clawed = session.scalar(
        select(CreditTransaction.amount).where(
            CreditTransaction.dedupe_key == f"dispute:{dispute_id}"
        )
    )
    if clawed is None:
        return
    _move_credits(session, payment, -clawed, kind="dispute_reversal",
                  dedupe_key=f"dispute_reversal:{dispute_id}",
                  description=f"dispute {dispute_id} closed, credits returned")
    _apply_refunds(session, payment)


def _move_credits(session: Session, payment: Payment, amount: int, *, kind: str,
                  dedupe_key: str, description: str) -> ledger.Entry | None:
    """Take back (``amount`` < 0) or give back credits of ``payment``, once per ``dedupe_key``.

    Taken: from the payment's own grants first, then the others, then as a recorded debt
    (the user may have spent them already; the ledger refuses spending until the balance is
    positive again). Given back: on the terms of the grant they were taken from.
    """
    ref_type, ref_id = _grant_ref(payment)
    terms: dict[str, Any] = (
        {"prefer": (ref_type, ref_id), "may_overdraw": True} if amount < 0 else
        {"expires_at": grants.expiry_of(session, reference_type=ref_type, reference_id=ref_id)}
    )
    return ledger.post(
        session, user_id=payment.user_id, amount=amount, kind=kind,
        reference_type="payment", reference_id=str(payment.id), dedupe_key=dedupe_key,
        serialized=True,  # the payment's row is locked: no twin can be in flight
        description=description, **terms,
    )


def _grant_ref(payment: Payment) -> tuple[str, str]:
    """The reference of the grants ``payment`` made: its own, or its invoice's."""
    if payment.flow == "subscription" and payment.stripe_invoice_id:
        return ("invoice", payment.stripe_invoice_id)
    return ("payment", str(payment.id))


def _share(credits: int, part_cents: int, whole_cents: int) -> int:
    """The credits that ``part_cents`` of ``whole_cents`` paid for (all of them for the whole)."""
    if whole_cents <= 0 or part_cents >= whole_cents:
        return credits if part_cents > 0 else 0
    return credits * part_cents // whole_cents


_DISPUTED = select(func.coalesce(-func.sum(CreditTransaction.amount), 0)).where(
    CreditTransaction.reference_type == "payment",
    CreditTransaction.reference_id == bindparam("payment_id"),
    CreditTransaction.kind.in_(("dispute", "dispute_reversal")),
)


def _disputed(session: Session, payment: Payment) -> int:
    """The payment's credits that disputes hold taken back now (claw-backs less reversals)."""
    return int(session.scalar(_DISPUTED, {"payment_id": str(payment.id)}) or 0)


def _refund_target(session: Session, payment: Payment) -> int:
    """The credits the refunds should hold taken back now, less what disputes took."""
    return min(
        payment.credits - _disputed(session, payment),
        _share(payment.credits, payment.refunded_cents, payment.amount_cents),
    )


_REVERSALS = select(func.count()).where(
    CreditTransaction.reference_type == "payment",
    CreditTransaction.reference_id == bindparam("payment_id"),
    CreditTransaction.kind == "refund_reversal",
)


def _reversals_suffix(session: Session, payment: Payment) -> str:
    """``:<n>`` after ``n`` refund reversals of the payment (none before the first): a level
    given back by a failed refund may be taken again by a later one."""
    n = int(session.scalar(_REVERSALS, {"payment_id": str(payment.id)}) or 0)
    return f":{n}" if n else ""


def _apply_refunds(session: Session, payment: Payment) -> None:
    """Take back the refunded share of the credits, less what disputes already took.

    Refunds and disputes together never take back more than the payment granted, in
    whichever order they arrive; a won dispute gives back its share and the refund's
    share, held down while the dispute stood, is taken then.
    """
    if payment.status not in GRANTED or payment.refunded_cents == 0:
        return
    target = _refund_target(session, payment)
    delta = target - payment.credits_refunded
    if delta > 0:
        _move_credits(
            session, payment, -delta, kind="refund",
            dedupe_key=f"refund:{payment.id}:{target}{_reversals_suffix(session, payment)}",
            description=f"refund of {payment.refunded_cents} {payment.currency} minor units")
        payment.credits_refunded = target
    full = payment.refunded_cents >= payment.amount_cents
    payment.status = "refunded" if full else "partially_refunded"


def _claw_back(
    session: Session, payment: Payment, *, dispute_id: str, amount_cents: int
) -> None:
    if payment.status not in GRANTED:
        raise NotReady(f"payment {payment.id} is disputed but not settled yet")
    credits = min(
        _share(payment.credits, amount_cents, payment.amount_cents),
        payment.credits - payment.credits_refunded - _disputed(session, payment),
    )
    if credits <= 0:
        return
    _move_credits(session, payment, -credits, kind="dispute",
                  dedupe_key=f"dispute:{dispute_id}", description=f"dispute {dispute_id}")
