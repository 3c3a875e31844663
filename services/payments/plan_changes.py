"""Plan changes: ``POST /subscription/change``.

An upgrade (a dearer plan) takes effect at once: Stripe's subscription moves to the new plan
with ``proration_behavior: always_invoice``, so the unused time of the old plan is credited,
the rest of the period on the new one charged, and that proration invoice, once paid, grants
the difference of the two plans' credits in proportion to its amount (``invoice_credits``).
A downgrade takes effect at the period's end: Stripe's subscription moves with
``proration_behavior: none`` (nothing is charged or refunded now, the renewal bills the new
plan) and our row keeps the current plan, its credits already paid for, until the renewal's
state applies the change (``subscriptions._plan_in_effect``). Each change is recorded in
``plan_changes`` with its from and to plan and direction; a newer change supersedes a
downgrade still waiting.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import Plan, PlanChange, Subscription, User
from services.errors import Conflict, InvalidInput, NotFound
from services.payments import plans, stripe_gateway, subscriptions
from services.payments.stripe_objects import StripeSubscription
from settings import Settings

LIVE = ("active", "trialing", "past_due")


@dataclass(frozen=True)
class Changed:
    """The subscription after a change and the change recorded (None: a wait called off)."""

    subscription: Subscription
    change: PlanChange | None


def direction(current: Plan, target: Plan) -> str:
    """``upgrade`` to a dearer plan (or, at the same price, one with more credits)."""
    dearer = (target.price_cents, target.monthly_credits) > (current.price_cents,
                                                            current.monthly_credits)
    return "upgrade" if dearer else "downgrade"


def pending(session: Session, subscription_id: uuid.UUID) -> PlanChange | None:
    """The downgrade waiting for the period's end, if any."""
    return session.scalar(select(PlanChange).where(
        PlanChange.subscription_id == subscription_id, PlanChange.status == "scheduled"))


def change(session: Session, settings: Settings, *, user: User, plan_ref: str) -> Changed:
    """Move the user's live subscription to another plan: now if dearer, else at period end."""
    target = plans.get_plan(session, plan_ref)
    if not target.active:
        raise InvalidInput("this plan is retired", code="plan_inactive")
    row = session.scalars(
        select(Subscription)
        .where(Subscription.user_id == user.id, Subscription.status.in_(LIVE))
        .order_by(Subscription.created_at.desc())
        .with_for_update()
    ).first()
    if row is None or row.stripe_subscription_id is None:
        raise NotFound("you have no active subscription", code="no_subscription")
    current = session.get(Plan, row.plan_id)
    assert current is not None
    waiting = pending(session, row.id)
    if target.id == current.id:
        if waiting is None:
            raise Conflict("you are on this plan already", code="plan_unchanged")
        # Calling off a waiting downgrade: Stripe goes back to the current plan.
        _move(settings, row, current, proration="none")
        waiting.status = "superseded"
        session.flush()
        return Changed(subscription=row, change=None)
    if target.currency != current.currency:
        raise InvalidInput("this plan is billed in another currency",
                           code="plan_currency_mismatch")
    price = target.stripe_plan_id or target.stripe_price_id
    if price is None:
        raise InvalidInput("this plan has no Stripe price", code="plan_not_sellable")
    if waiting is not None:
        waiting.status = "superseded"
        session.flush()
    way = direction(current, target)
    now = utc_now()
    if way == "upgrade":
        answer = _move(settings, row, target, proration="always_invoice")
        row.plan_id = target.id  # Stripe has moved it, whatever its answer's items say
        subscriptions.apply_answer(session, row, answer)
        recorded = PlanChange(user_id=user.id, subscription_id=row.id, from_plan_id=current.id,
                              to_plan_id=target.id, direction=way, status="applied",
                              effective_at=now, applied_at=now, created_at=now)
    else:
        _move(settings, row, target, proration="none")
        recorded = PlanChange(user_id=user.id, subscription_id=row.id, from_plan_id=current.id,
                              to_plan_id=target.id, direction=way, status="scheduled",
                              effective_at=row.current_period_end or now, created_at=now)
    session.add(recorded)
    session.flush()
    return Changed(subscription=row, change=recorded)


def _move(settings: Settings, row: Subscription, plan: Plan, *,
          proration: str) -> StripeSubscription:
    """Point the Stripe subscription's one item at ``plan``; Stripe's answer, parsed."""
    client = stripe_gateway.client(settings)
    assert row.stripe_subscription_id is not None
    with stripe_gateway.errors():
        remote = client.v1.subscriptions.retrieve(row.stripe_subscription_id)
        items = remote.to_dict(for_json=True).get("items", {}).get("data") or []
        item: dict[str, str] = {"id": items[0]["id"]} if items else {}
        if plan.stripe_plan_id:
            item["plan"] = plan.stripe_plan_id
        else:
            item["price"] = plan.stripe_price_id or ""
        answer = client.v1.subscriptions.update(
            row.stripe_subscription_id,
            params={"items": [item], "proration_behavior": proration},  # type: ignore[arg-type]
        )
    return StripeSubscription.parse(answer.to_dict(for_json=True))
