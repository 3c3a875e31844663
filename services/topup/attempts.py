"""Auto top-ups: start one when the balance crosses the threshold, charge, settle, fail.

- ``start``: in the transaction that handles the crossing. At most one top-up in flight per
  user (a partial unique index backs the check), ``max_per_month`` and the daily loop guard
  (``BILLING_TOPUP_DAILY_LIMIT``, whatever the settings) are enforced; a top-up that a limit
  stops is recorded as ``skipped``. A started top-up has its number (the user's sequence)
  and a pending payment, and its charge is enqueued after commit.
- ``charge_request``/``record_intent``: the task charges the saved method off-session with
  the Stripe idempotency key ``billing-topup-<user>-<number>``: a retried task (Stripe
  down, worker killed after the charge) gets the same PaymentIntent back, never a second.
- The credits arrive as for any purchase, through the event pipeline (``payment_intent.
  succeeded`` settles the payment); ``payment_settled`` then marks the top-up succeeded.
- ``record_failure``: a decline or ``authentication_required`` (SCA) fails the top-up, tells
  the user (mail) and the seller (``topup.failed``); ``BILLING_TOPUP_MAX_FAILURES`` (3) in a
  row disable auto top-up until the user enables it again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import AutoTopupSettings, CreditPackage, Payment, TopupAttempt, User
from services import task_queue
from services.pagination import Page, paginate
from services.payments import payment_methods, settlement
from services.topup import config
from services.webhooks import events
from settings import Settings

log = logging.getLogger(__name__)
CHARGE_TASK = "topup.charge"
NOTIFY_TASK = "notices.send"


@dataclass(frozen=True)
class ChargeRequest:
    attempt_id: uuid.UUID
    payment_id: uuid.UUID
    user_id: uuid.UUID
    customer_id: str
    payment_method_id: str
    amount_cents: int
    currency: str
    package_id: str
    idempotency_key: str


def _month_start() -> object:
    now = utc_now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _count(session: Session, user_id: uuid.UUID, since: object, statuses: tuple[str, ...]) -> int:
    return int(session.scalar(
        select(func.count()).select_from(TopupAttempt).where(
            TopupAttempt.user_id == user_id, TopupAttempt.created_at >= since,
            TopupAttempt.status.in_(statuses))
    ) or 0)


def start(session: Session, settings: Settings, *, user_id: uuid.UUID,
          balance: int) -> TopupAttempt | None:
    """Start a top-up for ``user_id`` whose balance fell to ``balance``; None when none is due."""
    cfg = session.get(AutoTopupSettings, user_id, with_for_update=True)
    if cfg is None or not cfg.enabled:
        return None
    in_flight = session.scalar(select(TopupAttempt.id).where(
        TopupAttempt.user_id == user_id, TopupAttempt.status == "pending"))
    if in_flight is not None:
        return None
    package = session.get(CreditPackage, cfg.package_id)
    method = payment_methods.default_for(session, user_id)
    cfg.sequence += 1
    attempt = TopupAttempt(user_id=user_id, sequence=cfg.sequence, package_id=cfg.package_id,
                           status="pending", balance_at_start=balance,
                           payment_method_id=method.id if method else None)
    session.add(attempt)
    skip = None
    if package is None or not package.active:
        skip = ("package_retired", f"package '{cfg.package_id}' is no longer for sale")
    elif method is None:
        skip = ("no_payment_method", "no saved payment method")
    elif _count(session, user_id, _month_start(), ("pending", "succeeded")) >= cfg.max_per_month:
        skip = ("max_per_month", f"{cfg.max_per_month} top-ups this month already")
    elif _count(session, user_id, utc_now() - timedelta(days=1),
                ("pending", "succeeded", "failed")) >= settings.topup_daily_limit:
        skip = ("daily_limit", f"{settings.topup_daily_limit} top-ups in 24 hours already")
        log.warning("auto top-up loop guard", extra={"user_id": str(user_id)})
    if skip is not None:
        attempt.status = "skipped"
        attempt.failure_code, attempt.failure_message = skip
        session.flush()
        return attempt
    assert package is not None
    payment = Payment(id=uuid.uuid4(), user_id=user_id, package_id=package.id,
                      flow="payment_intent", status="pending", amount_cents=package.price_cents,
                      currency=package.currency, credits=package.credits)
    session.add(payment)
    attempt.payment_id = payment.id
    session.flush()
    task_queue.enqueue(session, CHARGE_TASK, str(attempt.id))
    return attempt


def charge_request(session: Session, settings: Settings,
                   attempt_id: uuid.UUID) -> ChargeRequest | None:
    """What the charge of a pending top-up sends to Stripe; None when there is nothing to do
    (settled, failed, or its PaymentIntent already recorded)."""
    attempt = session.get(TopupAttempt, attempt_id, with_for_update=True)
    if attempt is None or attempt.status != "pending" or attempt.payment_id is None:
        return None
    payment = session.get(Payment, attempt.payment_id)
    user = session.get(User, attempt.user_id)
    if payment is None or user is None or payment.stripe_payment_intent_id is not None:
        return None
    if user.stripe_customer_id is None or attempt.payment_method_id is None:
        record_failure(session, attempt_id=attempt.id, code="no_payment_method",
                       message="no saved payment method",
                       max_failures=settings.topup_max_failures)
        return None
    return ChargeRequest(
        attempt_id=attempt.id, payment_id=payment.id, user_id=attempt.user_id,
        customer_id=user.stripe_customer_id, payment_method_id=attempt.payment_method_id,
        amount_cents=payment.amount_cents, currency=payment.currency,
        package_id=attempt.package_id,
        idempotency_key=f"billing-topup-{attempt.user_id}-{attempt.sequence}",
    )


def record_intent(session: Session, *, attempt_id: uuid.UUID, payment_intent_id: str) -> None:
    """Remember the top-up's PaymentIntent (its outcome arrives as an event)."""
    attempt = session.get(TopupAttempt, attempt_id)
    if attempt is None or attempt.payment_id is None:
        return
    payment = settlement.find_payment(session, payment_id=attempt.payment_id)
    if payment is not None:
        settlement.link(payment, payment_intent_id=payment_intent_id)


def _attempt_of(session: Session, payment: Payment) -> TopupAttempt | None:
    return session.scalars(select(TopupAttempt).where(TopupAttempt.payment_id == payment.id)
                           .with_for_update()).first()


def payment_settled(session: Session, payment: Payment) -> None:
    """The payment of a top-up was granted: the top-up succeeded (once)."""
    attempt = _attempt_of(session, payment)
    if attempt is None or attempt.status == "succeeded":
        return
    attempt.status = "succeeded"
    attempt.failure_code = attempt.failure_message = None
    cfg = session.get(AutoTopupSettings, attempt.user_id, with_for_update=True)
    if cfg is not None:
        cfg.consecutive_failures = 0
    events.emit(session, "topup.succeeded", _data(attempt, payment), user_id=attempt.user_id)


def payment_failed(session: Session, payment: Payment, *, code: str | None,
                   message: str | None, max_failures: int) -> None:
    """The payment of a top-up failed (an event said so)."""
    attempt = _attempt_of(session, payment)
    if attempt is not None:
        record_failure(session, attempt_id=attempt.id, code=code or "payment_failed",
                       message=message or "the payment failed", max_failures=max_failures)


def record_failure(session: Session, *, attempt_id: uuid.UUID, code: str, message: str,
                   max_failures: int) -> bool:
    """Fail a pending top-up (once): count it, maybe disable auto top-up, tell user and seller."""
    attempt = session.get(TopupAttempt, attempt_id, with_for_update=True)
    if attempt is None or attempt.status != "pending":
        return False
    attempt.status = "failed"
    attempt.failure_code = code[:64]
    attempt.failure_message = message[:500]
    payment = None
    if attempt.payment_id is not None:
        payment = settlement.find_payment(session, payment_id=attempt.payment_id)
        if payment is not None and settlement.fail(session, payment, reason=message):
            events.emit(session, "payment.failed", events.payment_data(payment),
                        user_id=payment.user_id)
    cfg = session.get(AutoTopupSettings, attempt.user_id, with_for_update=True)
    disabled = False
    if cfg is not None:
        cfg.consecutive_failures += 1
        if cfg.enabled and cfg.consecutive_failures >= max_failures:
            config.disable(session, cfg, reason=f"{cfg.consecutive_failures} failed top-ups "
                           f"in a row (last: {code})")
            disabled = True
    data = {**_data(attempt, payment), "failure_code": attempt.failure_code,
            "failure_message": attempt.failure_message, "auto_topup_disabled": disabled}
    events.emit(session, "topup.failed", data, user_id=attempt.user_id)
    task_queue.enqueue(session, NOTIFY_TASK, "topup_failed", str(attempt.id))
    return True


def _data(attempt: TopupAttempt, payment: Payment | None) -> dict[str, object]:
    return {
        "topup_id": str(attempt.id), "user_id": str(attempt.user_id),
        "sequence": attempt.sequence, "package_id": attempt.package_id,
        "payment_id": str(attempt.payment_id) if attempt.payment_id else None,
        "credits": payment.credits if payment else None,
        "amount_cents": payment.amount_cents if payment else None,
        "currency": payment.currency if payment else None,
    }


def history(session: Session, *, user_id: uuid.UUID, limit: int = 50,
            cursor: str | None = None) -> Page[TopupAttempt]:
    """The user's top-ups, newest first."""
    stmt = select(TopupAttempt).where(TopupAttempt.user_id == user_id)
    return paginate(session, stmt, key=(TopupAttempt.created_at, TopupAttempt.id),
                    limit=limit, cursor=cursor)
