"""Saved payment methods, auto top-up and low-balance alerts of the signed-in user."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, SettingsDep
from api.schemas.params import Cursor, Limit
from api.schemas.topup import (
    AlertsIn,
    AlertsOut,
    AutoTopupIn,
    AutoTopupOut,
    PaymentMethodListOut,
    PaymentMethodOut,
    SetupOut,
    TopupOut,
    TopupPageOut,
)
from services.payments import payment_methods
from services.topup import attempts, config

router = APIRouter(prefix="/api/user-management", tags=["top-up"])


@router.post("/payment-methods/setup", response_model=SetupOut, status_code=201,
             summary="Start saving a card for automatic top-ups",
             responses={503: {"description": "Stripe is unavailable"}})
def setup_payment_method(user: CurrentUser, session: SessionDep,
                         settings: SettingsDep) -> SetupOut:
    """A SetupIntent (``off_session``) whose ``client_secret`` Stripe.js confirms; the card
    appears in ``GET /payment-methods`` once Stripe's event says it is attached."""
    started = payment_methods.start_setup(session, settings, user=user)
    return SetupOut(setup_intent_id=started.setup_intent_id, client_secret=started.client_secret)


@router.get("/payment-methods", response_model=PaymentMethodListOut,
            summary="Saved payment methods")
def list_payment_methods(user: CurrentUser, session: SessionDep) -> PaymentMethodListOut:
    """The user's saved (attached) payment methods, newest first: the first is charged."""
    return PaymentMethodListOut(items=[
        PaymentMethodOut.model_validate(m) for m in payment_methods.list_methods(session, user.id)
    ])


def _view(view: config.AutoTopupView) -> AutoTopupOut:
    return AutoTopupOut(**view.__dict__)


@router.get("/credits/auto-topup", response_model=AutoTopupOut, summary="Auto top-up settings")
def get_auto_topup(user: CurrentUser, session: SessionDep) -> AutoTopupOut:
    """Whether a package is bought automatically when the balance falls below a threshold."""
    return _view(config.auto_topup(session, user.id))


@router.put(
    "/credits/auto-topup", response_model=AutoTopupOut, summary="Set auto top-up",
    responses={400: {"description": "threshold_above_package"},
               404: {"description": "package_not_found"},
               409: {"description": "package_retired, no_payment_method"}},
)
def put_auto_topup(body: AutoTopupIn, user: CurrentUser, session: SessionDep) -> AutoTopupOut:
    """Save the settings; enabling needs a saved card and clears earlier failures."""
    return _view(config.set_auto_topup(
        session, user_id=user.id, enabled=body.enabled, threshold=body.threshold,
        package_id=body.package_id, max_per_month=body.max_per_month,
    ))


@router.get("/credits/auto-topup/history", response_model=TopupPageOut,
            summary="Automatic top-ups, newest first")
def topup_history(user: CurrentUser, session: SessionDep, limit: Limit = 50,
                  cursor: Cursor = None) -> TopupPageOut:
    """Each automatic top-up with its status (pending, succeeded, failed, skipped)."""
    page = attempts.history(session, user_id=user.id, limit=limit, cursor=cursor)
    return TopupPageOut(items=[TopupOut.model_validate(a) for a in page.items],
                        next_cursor=page.next_cursor)


@router.get("/credits/alerts", response_model=AlertsOut, summary="Low-balance alert")
def get_alerts(user: CurrentUser, session: SessionDep) -> AlertsOut:
    """The balance below which a mail is sent (null: none)."""
    return AlertsOut(low_balance=config.low_balance_alert(session, user.id))


@router.put("/credits/alerts", response_model=AlertsOut, summary="Set the low-balance alert")
def put_alerts(body: AlertsIn, user: CurrentUser, session: SessionDep) -> AlertsOut:
    """One mail (and a ``credits.low`` webhook) each time the balance crosses below it."""
    return AlertsOut(low_balance=config.set_low_balance_alert(
        session, user_id=user.id, low_balance=body.low_balance))
