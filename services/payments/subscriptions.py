"""Plans and subscriptions: the admin's plans, a user's subscription, and Stripe's word on it.

State comes from Stripe's subscription events. Events arrive out of order, so each
applied state records its event's ``created`` time (``stripe_event_created``) and an
older event never overwrites a newer state; ``canceled`` is final whatever the order.
Each paid invoice grants the credits it paid for once (dedupe key ``invoice:<id>``): the rule
is ``services.payments.invoice_credits``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import Payment, Plan, Subscription, User
from db.models.users import SUBSCRIPTION_STATUSES
from services.admin import audit
from services.credits import ledger
from services.errors import Conflict, InvalidInput, NotFound
from services.payments import invoice_credits, stripe_gateway
from services.payments.stripe_objects import (
    NotReady,
    Rejected,
    Skip,
    StripeInvoice,
    StripeSubscription,
    as_uuid,
)
from settings import Settings

TERMINAL = frozenset({"canceled", "incomplete_expired"})
# A user with one of these cannot start a second subscription.
BLOCKING = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})


# --- plans ------------------------------------------------------------------------------------


def active_plans(session: Session) -> list[Plan]:
    """Plans on sale, cheapest first."""
    return list(
        session.scalars(
            select(Plan).where(Plan.active.is_(True)).order_by(Plan.price_cents, Plan.slug)
        )
    )


def all_plans(session: Session) -> list[Plan]:
    """Every plan, retired ones included (for admins)."""
    return list(session.scalars(select(Plan).order_by(Plan.price_cents, Plan.slug)))


def get_plan(session: Session, plan_ref: str | uuid.UUID) -> Plan:
    """A plan by id or slug; 404 when there is none."""
    plan_id = as_uuid(plan_ref)
    plan = (
        session.get(Plan, plan_id)
        if plan_id is not None
        else session.scalar(select(Plan).where(Plan.slug == str(plan_ref)))
    )
    if plan is None:
        raise NotFound("no such plan", code="plan_not_found")
    return plan


def create_plan(
    session: Session,
    settings: Settings,
    *,
    admin_id: uuid.UUID,
    slug: str,
    name: str,
    monthly_credits: int,
    price_cents: int,
    currency: str,
    trial_credits: int = 0,
    stripe_price_id: str | None = None,
    stripe_plan_id: str | None = None,
    request_id: str | None = None,
) -> Plan:
    """Add a plan; without a Stripe price or plan id, a monthly Stripe plan is created for it."""
    if session.scalar(select(Plan.id).where(Plan.slug == slug)) is not None:
        raise Conflict("a plan with this slug exists", code="plan_exists")
    if stripe_price_id is None and stripe_plan_id is None:
        with stripe_gateway.errors():
            created = stripe_gateway.client(settings).v1.plans.create(
                params={
                    "amount": price_cents,
                    "currency": currency.lower(),
                    "interval": "month",
                    "product": {"name": name},
                    "metadata": {"slug": slug},
                },
                options={"idempotency_key": f"billing-plan-{slug}-{price_cents}-{currency}"},
            )
        stripe_plan_id = created.id
    plan = Plan(
        slug=slug,
        name=name,
        monthly_credits=monthly_credits,
        trial_credits=trial_credits,
        price_cents=price_cents,
        currency=currency,
        stripe_price_id=stripe_price_id,
        stripe_plan_id=stripe_plan_id,
    )
    session.add(plan)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict("a plan with this slug or Stripe id exists", code="plan_exists") from None
    session.refresh(plan)  # server defaults (active, created_at)
    audit.record(
        session,
        admin_id=admin_id,
        action="plan.create",
        before=None,
        after=_plan_view(plan),
        request_id=request_id,
    )
    return plan


def update_plan(
    session: Session,
    *,
    admin_id: uuid.UUID,
    plan_ref: str,
    changes: dict[str, Any],
    request_id: str | None = None,
) -> Plan:
    """Rename a plan, change its monthly or trial credits, or retire/restore it (``active``)."""
    allowed = {"name", "monthly_credits", "trial_credits", "active"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", code="immutable_field")
    plan = get_plan(session, plan_ref)
    before = _plan_view(plan)
    for key, value in changes.items():
        setattr(plan, key, value)
    session.flush()
    audit.record(
        session,
        admin_id=admin_id,
        action="plan.update",
        before=before,
        after=_plan_view(plan),
        request_id=request_id,
    )
    return plan


def _plan_view(plan: Plan) -> dict[str, Any]:
    return {
        "id": str(plan.id) if plan.id else None,
        "slug": plan.slug,
        "name": plan.name,
        "monthly_credits": plan.monthly_credits,
        "trial_credits": plan.trial_credits or 0,
        "price_cents": plan.price_cents,
        "currency": plan.currency,
        "active": plan.active if plan.active is not None else True,
    }


# --- a user's subscription --------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A started subscription: the row (direct) or where to pay for it (Checkout)."""

    subscription: Subscription | None = None
    checkout_url: str | None = None
    session_id: str | None = None


def current(session: Session, user_id: uuid.UUID) -> Subscription | None:
    """The user's subscription that matters: a live one first, else the latest."""
    live_first = case((Subscription.status.in_(TERMINAL), 1), else_=0)
    return session.scalars(
        select(Subscription)
        .where(Subscription.user_id == user_id)
        .order_by(live_first, Subscription.created_at.desc())
        .limit(1)
    ).first()


def start(
    session: Session,
    settings: Settings,
    *,
    user: User,
    plan_ref: str,
    payment_method: str | None = None,
    success_url: str,
    cancel_url: str,
) -> Started:
    """Subscribe ``user`` to a plan: directly with a saved payment method, else via Checkout."""
    plan = get_plan(session, plan_ref)
    if not plan.active:
        raise InvalidInput("this plan is retired", code="plan_inactive")
    price = plan.stripe_plan_id or plan.stripe_price_id
    if price is None:
        raise InvalidInput("this plan has no Stripe price", code="plan_not_sellable")
    # Serialise a user's subscription starts: the check below must not race itself. The
    # user is re-read under the lock: a start that held it may have made their customer.
    session.refresh(user, with_for_update=True)
    existing = current(session, user.id)
    if existing is not None and existing.status in BLOCKING:
        raise Conflict("you already have a subscription", code="subscription_exists")
    meta = {"user_id": str(user.id), "plan_id": str(plan.id)}
    client = stripe_gateway.client(settings)
    with stripe_gateway.errors(payment_method=payment_method):
        customer_id = stripe_gateway.customer_of(session, client, user)
        if payment_method is None:
            _expire_open_checkouts(client, customer_id)
            checkout = client.v1.checkout.sessions.create(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": str(user.id),
                    "line_items": [{"price": price, "quantity": 1}],
                    "metadata": meta,
                    "subscription_data": {"metadata": meta},
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                }
            )
            return Started(checkout_url=checkout.url, session_id=checkout.id)
        _use_payment_method(client, customer_id, payment_method)
        item = {"plan": plan.stripe_plan_id} if plan.stripe_plan_id else {"price": price}
        params: dict[str, Any] = {"customer": customer_id, "items": [item], "metadata": meta}
        created = client.v1.subscriptions.create(params=params)  # type: ignore[arg-type]
    answer = StripeSubscription.parse(created.to_dict(for_json=True))
    row = _upsert(session, answer, user_id=user.id, plan_id=plan.id)
    if row.stripe_event_created is None:
        # No event applied yet: the API's answer is the best state we have.
        _apply_fields(session, row, answer, status=str(answer.status))
    _sync_user(session, user.id)
    return Started(subscription=row)


def cancel(session: Session, settings: Settings, *, user: User, immediately: bool) -> Subscription:
    """Cancel the user's live subscription at the period end, or at once with ``immediately``."""
    row = session.scalars(
        select(Subscription)
        .where(Subscription.user_id == user.id, Subscription.status.not_in(TERMINAL))
        .order_by(Subscription.created_at.desc())
        .with_for_update()
    ).first()
    if row is None or row.stripe_subscription_id is None:
        raise NotFound("you have no active subscription", code="no_subscription")
    client = stripe_gateway.client(settings)
    with stripe_gateway.errors():
        if immediately:
            answer = client.v1.subscriptions.cancel(row.stripe_subscription_id)
        else:
            answer = client.v1.subscriptions.update(
                row.stripe_subscription_id, params={"cancel_at_period_end": True}
            )
    state = StripeSubscription.parse(answer.to_dict(for_json=True))
    # Stripe's answer is newer than any event we applied, but it carries no event time:
    # apply it without moving the watermark, so the events that follow still apply.
    status = "canceled" if immediately else (state.status or row.status)
    _apply_fields(session, row, state, status=status)
    if not immediately:
        row.cancel_at_period_end = True
    _sync_user(session, user.id)
    return row


def _use_payment_method(client: stripe.StripeClient, customer_id: str,
                        payment_method: str) -> None:
    """Attach the client's saved payment method and make it the customer's default."""
    client.v1.payment_methods.attach(payment_method, params={"customer": customer_id})
    client.v1.customers.update(
        customer_id,
        params={"invoice_settings": {"default_payment_method": payment_method}},
    )


def _expire_open_checkouts(client: stripe.StripeClient, customer_id: str) -> None:
    """Expire the customer's subscription Checkout Sessions still open, before a new one.

    Two starts (a double click, two tabs) must not leave two payable checkouts, each of which
    would start a subscription; the starts are serialised by the user's row lock, so the later
    one finds the earlier session here. One completed meanwhile cannot be expired: the user
    has just subscribed.
    """
    listed = client.v1.checkout.sessions.list(
        params={"customer": customer_id, "status": "open", "limit": 100}
    )
    for open_session in listed.data:
        if open_session.mode != "subscription":
            continue  # a credit purchase in progress is not a subscription
        try:
            client.v1.checkout.sessions.expire(open_session.id)
        except stripe.InvalidRequestError:
            raise Conflict("a subscription checkout was just completed",
                           code="subscription_exists") from None


# --- Stripe's events ------------------------------------------------------------------------


def apply_event_state(
    session: Session, sub: StripeSubscription, *, event_created: int, deleted: bool = False
) -> Subscription:
    """Apply a ``customer.subscription.*`` event's state unless a newer one was applied."""
    status = "canceled" if deleted else sub.status
    if status not in SUBSCRIPTION_STATUSES:
        raise Rejected(f"subscription event with id {sub.id!r} and status {status!r}")
    row = _locked(session, sub.id)
    if row is None:
        user_id = _owner(session, user_id=sub.user_id, customer=sub.customer)
        plan = _plan_of(session, sub.price_ids, plan_id=sub.plan_id)
        if plan is None:
            raise Rejected(f"subscription {sub.id} is for a plan we do not sell")
        row = _upsert(session, sub, user_id=user_id, plan_id=plan.id)
    if not _is_newer(row, event_created=event_created, status=str(status)):
        return row
    _apply_fields(session, row, sub, status=str(status))
    row.stripe_event_created = max(event_created, row.stripe_event_created or 0)
    _sync_user(session, row.user_id)
    return row


def grant_invoice(session: Session, invoice: StripeInvoice) -> ledger.Entry | None:
    """Grant what a paid subscription invoice paid for (``invoice_credits``), once per invoice."""
    if invoice.status not in (None, "paid"):
        raise Skip(f"invoice {invoice.id} is {invoice.status}, not paid")
    if invoice.subscription_id is None:
        raise Skip(f"invoice {invoice.id} bills no subscription")
    row = session.scalar(
        select(Subscription).where(Subscription.stripe_subscription_id == invoice.subscription_id)
    )
    # The plan is the one the invoice's lines bill, whatever the subscription is on by the
    # time this event is processed (an upgrade's event may come first); failing that, the
    # subscription's, or, before its own event arrived, our metadata.
    billed = _plan_of(session, invoice.price_ids, plan_id=invoice.plan_id if row is None else None)
    if row is not None:
        user_id, plan = row.user_id, billed or session.get(Plan, row.plan_id)
    else:
        user_id = _owner(session, user_id=invoice.user_id, customer=invoice.customer,
                         not_ours=NotReady)
        plan = billed
    if plan is None:
        raise NotReady(f"plan of subscription {invoice.subscription_id} not known yet")
    grant = invoice_credits.grant_for(session, invoice, plan=plan)
    if invoice.amount_paid == 0 and grant.credits == 0:
        raise Skip(f"invoice {invoice.id} paid nothing and grants nothing")
    if invoice.amount_paid > 0:
        session.execute(
            insert(Payment)
            .values(
                user_id=user_id,
                plan_id=grant.plan.id,
                flow="subscription",
                status="succeeded",
                amount_cents=invoice.amount_paid,
                currency=grant.plan.currency,
                credits=grant.credits,
                stripe_invoice_id=invoice.id,
                stripe_payment_intent_id=invoice.payment_intent,
                succeeded_at=utc_now(),
            )
            .on_conflict_do_nothing()
        )
    if grant.credits == 0:
        return None
    return ledger.post(
        session,
        user_id=user_id,
        amount=grant.credits,
        kind="subscription_grant",
        reference_type="invoice",
        reference_id=invoice.id,
        dedupe_key=f"invoice:{invoice.id}",
        description=f"{grant.credits} credits for plan {grant.plan.slug}",
    )


def invoice_failed(session: Session, invoice: StripeInvoice, *, event_created: int) -> None:
    """A failed renewal makes a live subscription past due (unless a newer state says else)."""
    row = _locked(session, invoice.subscription_id) if invoice.subscription_id else None
    if row is None:
        raise Skip("failed invoice of no subscription we know")
    if row.status not in ("active", "trialing"):
        return  # a first payment failing leaves it incomplete; Stripe says so itself
    if not _is_newer(row, event_created=event_created, status="past_due"):
        return
    row.status = "past_due"
    row.stripe_event_created = max(event_created, row.stripe_event_created or 0)
    _sync_user(session, row.user_id)


def _is_newer(row: Subscription, *, event_created: int, status: str) -> bool:
    if row.status in TERMINAL and status not in TERMINAL:
        return False  # Stripe never revives a canceled subscription: a live state is stale
    stored = row.stripe_event_created
    if stored is None or event_created > stored:
        return True
    if event_created < stored:
        return False
    # Same second (Stripe stamps a subscription's creation, ``incomplete``, and its first
    # payment's ``active`` alike): never back to an earlier stage of the lifecycle; within
    # one stage, the later delivery.
    return _stage(status) >= _stage(row.status)


def _stage(status: str) -> int:
    """Where a status lies in a subscription's life: starting, live, or ended."""
    if status in TERMINAL:
        return 2
    return 0 if status == "incomplete" else 1


def _locked(session: Session, stripe_id: str) -> Subscription | None:
    return session.scalar(
        select(Subscription)
        .where(Subscription.stripe_subscription_id == stripe_id)
        .with_for_update()
    )


def _upsert(
    session: Session, sub: StripeSubscription, *, user_id: uuid.UUID, plan_id: uuid.UUID
) -> Subscription:
    """The row for a Stripe subscription, inserted if new (concurrent events insert once)."""
    session.execute(
        insert(Subscription)
        .values(
            user_id=user_id,
            plan_id=plan_id,
            stripe_subscription_id=sub.id,
            status=sub.status if sub.status in SUBSCRIPTION_STATUSES else "incomplete",
        )
        .on_conflict_do_nothing(index_elements=["stripe_subscription_id"])
    )
    row = _locked(session, sub.id)
    assert row is not None
    return row


def _apply_fields(session: Session, row: Subscription, sub: StripeSubscription, *,
                  status: str) -> None:
    row.status = status
    row.cancel_at_period_end = sub.cancel_at_period_end
    row.canceled_at = sub.canceled_at or (
        row.canceled_at or utc_now() if status == "canceled" else None
    )
    row.current_period_start = sub.current_period_start or row.current_period_start
    row.current_period_end = sub.current_period_end or row.current_period_end
    plan = _plan_of(session, sub.price_ids)
    if plan is not None:
        row.plan_id = plan.id
    row.raw = sub.raw
    session.flush()


def _owner(
    session: Session, *, user_id: uuid.UUID | None, customer: str | None,
    not_ours: type[Exception] = Skip,
) -> uuid.UUID:
    """The user a subscription or invoice belongs to: our metadata, else the Stripe customer."""
    if user_id is not None and session.get(User, user_id) is not None:
        return user_id
    found = user_of_customer(session, customer)
    if found is None:
        raise not_ours(f"customer {customer!r} is no user of ours")
    return found


def user_of_customer(session: Session, customer: str | None) -> uuid.UUID | None:
    """Our user whose Stripe customer ``customer`` is; None for a stranger's (or none)."""
    if not customer:
        return None
    return session.scalar(select(User.id).where(User.stripe_customer_id == customer))


def _plan_of(
    session: Session, price_ids: Sequence[str], *, plan_id: uuid.UUID | None = None
) -> Plan | None:
    """The plan that Stripe prices or plans ``price_ids`` name; else ``plan_id`` (metadata)."""
    if price_ids:
        plan = session.scalars(
            select(Plan).where(Plan.stripe_plan_id.in_(price_ids)
                               | Plan.stripe_price_id.in_(price_ids))
        ).first()
        if plan is not None:
            return plan
    return session.get(Plan, plan_id) if plan_id is not None else None


def _sync_user(session: Session, user_id: uuid.UUID) -> None:
    """Point ``users.subscription_status`` / ``subscription_plan_id`` at the one that matters."""
    session.flush()
    row = current(session, user_id)
    live = row is not None and row.status not in TERMINAL
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            subscription_status=row.status if row is not None else None,
            subscription_plan_id=row.plan_id if live and row is not None else None,
        )
    )
