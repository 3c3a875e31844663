"""Bodies of the webhook, subscription, plan and webhook-event routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

from db.models.stripe import EVENT_STATUSES
from services.credits.ledger import MAX_CREDITS

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
StripeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{3,255}$")]
PaymentMethodId = Annotated[str, StringConstraints(pattern=r"^pm_[A-Za-z0-9_]{1,250}$")]
MonthlyCredits = Annotated[int, Field(strict=True, gt=0, le=MAX_CREDITS)]
TrialCredits = Annotated[int, Field(strict=True, ge=0, le=MAX_CREDITS,
                                    description="Granted by the $0 invoice that starts a "
                                                "subscription (a trial); default none")]
EventStatus = Literal[EVENT_STATUSES]  # type: ignore[valid-type]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookOut(BaseModel):
    received: bool = True
    duplicate: bool = Field(description="The event id was already stored; nothing was enqueued")


# --- plans ------------------------------------------------------------------------------------


class PlanOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    slug: str
    name: str
    monthly_credits: int
    trial_credits: int
    price_cents: int
    currency: str


class AdminPlanOut(PlanOut):
    active: bool
    stripe_price_id: str | None
    stripe_plan_id: str | None
    created_at: datetime


class PlanCreateIn(_In):
    slug: Slug
    name: Name
    monthly_credits: MonthlyCredits
    trial_credits: TrialCredits = 0
    price_cents: Annotated[int, Field(strict=True, gt=0, le=100_000_000)]
    currency: Currency = "USD"
    stripe_price_id: StripeId | None = Field(
        None, description="An existing Stripe price; none given: a Stripe plan is created"
    )
    stripe_plan_id: StripeId | None = None


class PlanUpdateIn(_In):
    name: Name | None = None
    monthly_credits: MonthlyCredits | None = None
    trial_credits: TrialCredits | None = None
    active: Annotated[bool, Field(strict=True)] | None = None


# --- subscriptions ----------------------------------------------------------------------------


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    plan_id: uuid.UUID
    status: str
    stripe_subscription_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    created_at: datetime


class SubscriptionStateOut(BaseModel):
    subscription: SubscriptionOut | None
    plan: PlanOut | None


class SubscribeIn(_In):
    plan_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The plan's id or slug"
    )
    payment_method: PaymentMethodId | None = Field(
        None, description="A saved payment method: subscribe directly, without Checkout"
    )
    success_url: AnyHttpUrl | None = Field(None, description="Only on the configured host")
    cancel_url: AnyHttpUrl | None = Field(None, description="Only on the configured host")


class SubscribeOut(BaseModel):
    subscription: SubscriptionOut | None = None
    checkout_url: str | None = None
    session_id: str | None = None


class CancelIn(_In):
    immediately: Annotated[bool, Field(strict=True)] = Field(
        False, description="End it now instead of at the end of the paid period"
    )


# --- admin: webhook events --------------------------------------------------------------------


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    type: str
    status: str
    attempts: int
    last_error: str | None
    livemode: bool
    stripe_created: int
    received_at: datetime
    processed_at: datetime | None


class EventDetailOut(EventOut):
    payload: dict[str, Any]


class EventPageOut(BaseModel):
    items: list[EventOut]
    next_cursor: str | None
