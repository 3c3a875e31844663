"""Plans: what a subscription can be, set up by admins (each one a Stripe product and price).

Only a plan's name, monthly and trial credits, rollover and whether it is on sale can change
(anything that Stripe's price fixes cannot: a new price is a new plan); each creation and
change is audited in the admin's transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Plan
from services.admin import audit
from services.errors import Conflict, InvalidInput, NotFound
from services.payments import stripe_gateway
from services.payments.stripe_objects import as_uuid
from settings import Settings


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
    rollover: bool = False,
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
        rollover=rollover,
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
    """Rename a plan, change its monthly or trial credits or ``rollover``, or retire/restore it
    (``active``)."""
    allowed = {"name", "monthly_credits", "trial_credits", "rollover", "active"}
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
        "rollover": bool(plan.rollover),
        "price_cents": plan.price_cents,
        "currency": plan.currency,
        "active": plan.active if plan.active is not None else True,
    }
