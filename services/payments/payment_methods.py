"""Saved payment methods: a SetupIntent to save one for off-session use, and our copy.

Our copy follows Stripe's word only: ``payment_method.attached`` / ``payment_method.detached``
(and ``setup_intent.succeeded``, which names the method saved) through the event inbox,
each applied unless a newer event about the method was applied already.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import SavedPaymentMethod, User
from services.payments import stripe_gateway
from services.payments.stripe_objects import Skip, StripeObject, ref
from settings import Settings


@dataclass(frozen=True)
class SetupStarted:
    setup_intent_id: str
    client_secret: str
    customer_id: str


def start_setup(session: Session, settings: Settings, *, user: User) -> SetupStarted:
    """A SetupIntent (usage ``off_session``) for the user's Stripe customer."""
    client = stripe_gateway.client(settings)
    with stripe_gateway.errors():
        customer_id = stripe_gateway.customer_of(session, client, user)
        intent = client.v1.setup_intents.create(params={
            "customer": customer_id, "usage": "off_session",
            "payment_method_types": ["card"], "metadata": {"user_id": str(user.id)},
        })  # type: ignore[arg-type]
    assert intent.client_secret is not None
    return SetupStarted(setup_intent_id=intent.id, client_secret=intent.client_secret,
                        customer_id=customer_id)


def list_methods(session: Session, user_id: uuid.UUID) -> list[SavedPaymentMethod]:
    """The user's attached payment methods, newest first."""
    return list(session.scalars(
        select(SavedPaymentMethod)
        .where(SavedPaymentMethod.user_id == user_id, SavedPaymentMethod.detached_at.is_(None))
        .order_by(SavedPaymentMethod.created_at.desc(), SavedPaymentMethod.id)
    ))


def default_for(session: Session, user_id: uuid.UUID) -> SavedPaymentMethod | None:
    """The method off-session charges use: the newest attached one."""
    methods = list_methods(session, user_id)
    return methods[0] if methods else None


def _user_of_customer(session: Session, customer: str | None) -> uuid.UUID | None:
    if customer is None:
        return None
    return session.scalar(select(User.id).where(User.stripe_customer_id == customer))


def apply_attached(session: Session, pm: StripeObject, *, event_created: int,
                   customer: str | None = None) -> SavedPaymentMethod:
    """Record (or refresh) the attached method ``pm`` of one of our customers."""
    pm_id = ref(pm.get("id"))
    user_id = _user_of_customer(session, ref(pm.get("customer")) or customer)
    if pm_id is None or user_id is None:
        raise Skip(f"payment method {pm_id} is not attached to one of our customers")
    row = session.get(SavedPaymentMethod, pm_id, with_for_update=True)
    if row is not None and (row.stripe_event_created or 0) > event_created:
        return row
    raw_card = pm.get("card")
    card: dict[str, Any] = raw_card if isinstance(raw_card, dict) else {}
    if row is None:
        row = SavedPaymentMethod(id=pm_id, user_id=user_id, type=str(pm.get("type") or "card"))
        session.add(row)
    row.user_id = user_id
    row.brand = card.get("brand")
    row.last4 = card.get("last4")
    row.exp_month = card.get("exp_month")
    row.exp_year = card.get("exp_year")
    row.detached_at = None
    row.stripe_event_created = event_created
    session.flush()
    return row


def apply_detached(session: Session, pm: StripeObject, *, event_created: int) -> None:
    """Mark the method detached (no longer charged off-session)."""
    pm_id = ref(pm.get("id"))
    row = session.get(SavedPaymentMethod, pm_id, with_for_update=True) if pm_id else None
    if row is None:
        raise Skip(f"payment method {pm_id} is not one we know")
    if (row.stripe_event_created or 0) > event_created:
        return
    row.detached_at = utc_now()
    row.stripe_event_created = event_created


def apply_setup_succeeded(session: Session, settings: Settings, intent: StripeObject, *,
                          event_created: int) -> None:
    """A SetupIntent saved a method: read it from Stripe and record it."""
    pm_id = ref(intent.get("payment_method"))
    if pm_id is None:
        raise Skip("setup intent without a payment method")
    pm = stripe_gateway.client(settings).v1.payment_methods.retrieve(pm_id)
    apply_attached(session, pm.to_dict(), event_created=event_created,
                   customer=ref(intent.get("customer")))
