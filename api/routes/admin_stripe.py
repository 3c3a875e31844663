"""Admin: the Stripe event inbox (inspect, retry) and the subscription plans."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AdminUser, RequestIdDep, SessionDep, SettingsDep
from api.schemas.params import Cursor, Limit
from api.schemas.stripe import (
    AdminPlanOut,
    EventDetailOut,
    EventOut,
    EventPageOut,
    EventStatus,
    PlanCreateIn,
    PlanUpdateIn,
)
from services.payments import subscriptions
from services.stripe_events import process as events

router = APIRouter(prefix="/api/user-management/admin", tags=["admin"])


@router.get("/webhook-events", response_model=EventPageOut, summary="Stored Stripe events")
def list_webhook_events(
    admin: AdminUser,
    session: SessionDep,
    status: EventStatus | None = None,
    type: Annotated[str | None, Query(max_length=100)] = None,  # noqa: A002 - the query name
    limit: Limit = 50,
    cursor: Cursor = None,
) -> EventPageOut:
    """Events newest first; ``status=failed`` lists the ones parked for an operator."""
    page = events.list_events(
        session, status=status, event_type=type, limit=limit, cursor=cursor
    )
    return EventPageOut(
        items=[EventOut.model_validate(e) for e in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/webhook-events/{event_id}", response_model=EventDetailOut, summary="One stored event"
)
def get_webhook_event(event_id: str, admin: AdminUser, session: SessionDep) -> EventDetailOut:
    """The event with its payload as Stripe sent it."""
    return EventDetailOut.model_validate(events.get(session, event_id))


@router.post(
    "/webhook-events/{event_id}/retry",
    response_model=EventOut,
    status_code=202,
    summary="Process a failed event again",
    responses={409: {"description": "event_done: already processed or ignored"}},
)
def retry_webhook_event(
    event_id: str, admin: AdminUser, session: SessionDep, request_id: RequestIdDep
) -> EventOut:
    """Put a failed (or stuck) event back in the queue; audited."""
    row = events.retry(session, event_id=event_id, admin_id=admin.id, request_id=request_id)
    return EventOut.model_validate(row)


@router.get("/plans", response_model=list[AdminPlanOut], summary="All plans")
def list_plans(admin: AdminUser, session: SessionDep) -> list[AdminPlanOut]:
    """Every plan, retired ones included."""
    return [AdminPlanOut.model_validate(p) for p in subscriptions.all_plans(session)]


@router.post("/plans", response_model=AdminPlanOut, status_code=201, summary="Add a plan",
             responses={409: {"description": "plan_exists"},
                        503: {"description": "Stripe is unavailable; nothing was made"}})
def create_plan(
    body: PlanCreateIn,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> AdminPlanOut:
    """A new plan; without a Stripe price or plan id, a monthly Stripe plan is made for it."""
    plan = subscriptions.create_plan(
        session,
        settings,
        admin_id=admin.id,
        slug=body.slug,
        name=body.name,
        monthly_credits=body.monthly_credits,
        trial_credits=body.trial_credits,
        price_cents=body.price_cents,
        currency=body.currency,
        stripe_price_id=body.stripe_price_id,
        stripe_plan_id=body.stripe_plan_id,
        request_id=request_id,
    )
    return AdminPlanOut.model_validate(plan)


@router.patch("/plans/{plan_id}", response_model=AdminPlanOut, summary="Change a plan")
def update_plan(
    plan_id: str,
    body: PlanUpdateIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
) -> AdminPlanOut:
    """Rename, change the monthly or trial credits, or retire/restore (``active``) a plan."""
    plan = subscriptions.update_plan(
        session,
        admin_id=admin.id,
        plan_ref=plan_id,
        changes=body.model_dump(exclude_unset=True, exclude_none=True),
        request_id=request_id,
    )
    return AdminPlanOut.model_validate(plan)


@router.delete("/plans/{plan_id}", response_model=AdminPlanOut, summary="Retire a plan")
def retire_plan(
    plan_id: str, admin: AdminUser, session: SessionDep, request_id: RequestIdDep
) -> AdminPlanOut:
    """Stop selling a plan; existing subscriptions keep it."""
    plan = subscriptions.update_plan(
        session,
        admin_id=admin.id,
        plan_ref=plan_id,
        changes={"active": False},
        request_id=request_id,
    )
    return AdminPlanOut.model_validate(plan)

