"""Plans on sale and the signed-in user's subscription."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.idempotency import IdempotencyDep
from api.schemas.stripe import (
    CancelIn,
    PlanOut,
    SubscribeIn,
    SubscribeOut,
    SubscriptionOut,
    SubscriptionStateOut,
)
from services.payments import purchases as payments
from services.payments import subscriptions

router = APIRouter(prefix="/api/user-management", tags=["subscriptions"])


@router.get("/plans", response_model=list[PlanOut], summary="Plans for sale")
def list_plans(session: SessionDep) -> list[PlanOut]:
    """The subscription plans that can be bought now (public)."""
    return [PlanOut.model_validate(p) for p in subscriptions.active_plans(session)]


@router.get("/subscription", response_model=SubscriptionStateOut, summary="My subscription")
def get_subscription(user: CurrentUser, session: SessionDep) -> SubscriptionStateOut:
    """The user's live subscription (else the latest one), or nulls when there never was one."""
    row = subscriptions.current(session, user.id)
    if row is None:
        return SubscriptionStateOut(subscription=None, plan=None)
    plan = subscriptions.get_plan(session, row.plan_id)
    return SubscriptionStateOut(
        subscription=SubscriptionOut.model_validate(row), plan=PlanOut.model_validate(plan)
    )


@router.post(
    "/subscription",
    response_model=SubscribeOut,
    status_code=201,
    summary="Subscribe to a plan",
    responses={
        404: {"description": "plan_not_found"},
        409: {"description": "subscription_exists, or an Idempotency-Key conflict"},
        503: {"description": "Stripe is unavailable; nothing was made"},
    },
)
def subscribe(
    body: SubscribeIn,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
) -> Any:
    """A Checkout Session in subscription mode, or with ``payment_method`` a direct subscription.

    Credits come with each paid invoice (Stripe's events), never with this call.
    """

    def work() -> SubscribeOut:
        success_url, cancel_url = payments.redirect_urls(
            settings,
            success_url=str(body.success_url) if body.success_url else None,
            cancel_url=str(body.cancel_url) if body.cancel_url else None,
        )
        started = subscriptions.start(
            session,
            settings,
            user=user,
            plan_ref=body.plan_id,
            payment_method=body.payment_method,
            success_url=success_url,
            cancel_url=cancel_url,
        )
        row = started.subscription
        return SubscribeOut(
            subscription=SubscriptionOut.model_validate(row) if row is not None else None,
            checkout_url=started.checkout_url,
            session_id=started.session_id,
        )

    return idem.run(session, user_id=user.id, body=body, work=work, status_code=201)


@router.post(
    "/subscription/cancel",
    response_model=SubscriptionOut,
    summary="Cancel my subscription",
    responses={404: {"description": "no_subscription"}, 503: {"description": "Stripe is down"}},
)
def cancel_subscription(
    user: CurrentUser, session: SessionDep, settings: SettingsDep, body: CancelIn | None = None
) -> SubscriptionOut:
    """Cancel at the end of the paid period, or at once with ``immediately: true``."""
    immediately = body.immediately if body is not None else False
    row = subscriptions.cancel(session, settings, user=user, immediately=immediately)
    return SubscriptionOut.model_validate(row)
