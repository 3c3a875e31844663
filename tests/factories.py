"""Factories: committed rows and signed-in headers, built the way the product builds them."""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy.orm import Session

from db.models import User
from services.auth.tokens import create_access_token
from services.credits import ledger
from settings import get_settings

_seq = itertools.count(1)


def make_user(
    db: Session, *, email: str | None = None, role: str = "user", credits: int = 0,
    active: bool = True, **fields,
) -> User:
    """A committed, confirmed user; ``credits`` are granted through the ledger as a bonus."""
    from db.base import utc_now

    user = User(
        email=email or f"user{next(_seq)}-{uuid.uuid4().hex[:6]}@example.com",
        role=role,
        is_active=active,
        email_confirmed_at=utc_now(),
        **fields,
    )
    db.add(user)
    db.flush()
    if credits:
        ledger.post(db, user_id=user.id, amount=credits, kind="bonus", reference_type="test")
    db.commit()
    return user


def auth_headers(user: User) -> dict[str, str]:
    """A bearer header with a fresh access token for ``user``."""
    token = create_access_token(get_settings(), user_id=user.id, role=user.role)
    return {"Authorization": f"Bearer {token}"}


def signed_in_headers(db: Session, user: User) -> dict[str, str]:
    """A bearer header of a real sign-in (its refresh token family is the token's ``sid``)."""
    from services.auth.refresh import sign_in

    pair = sign_in(db, get_settings(), user)
    db.commit()
    return {"Authorization": f"Bearer {pair.access_token}"}


def make_payment(
    db: Session, user: User, *, package_id: str = "starter", flow: str = "payment_intent",
    stripe_client=None, payment_method: str | None = None,
):
    """A committed pending payment for a package, as ``services.payments.purchases`` leaves it.

    With ``stripe_client`` its PaymentIntent is created in localstripe (metadata included),
    confirmed at once with ``payment_method`` if given; otherwise the Stripe ids are made up.
    """
    from db.models import CreditPackage, Payment

    package = db.get(CreditPackage, package_id)
    assert package is not None, f"no package {package_id}"
    payment = Payment(
        id=uuid.uuid4(), user_id=user.id, package_id=package.id, flow=flow, status="pending",
        amount_cents=package.price_cents, currency=package.currency, credits=package.credits,
    )
    intent_id, charge_id = f"pi_test{uuid.uuid4().hex[:20]}", f"ch_test{uuid.uuid4().hex[:20]}"
    if stripe_client is not None:
        params = {
            "amount": package.price_cents, "currency": package.currency.lower(),
            "metadata": {"payment_id": str(payment.id), "user_id": str(user.id),
                         "package_id": package.id},
        }
        if payment_method:
            params.update(payment_method=payment_method, confirm=True)
        intent = stripe_client.v1.payment_intents.create(params=params)
        intent_id = intent.id
        latest = intent.to_dict().get("latest_charge")
        charge_id = (latest.get("id") if isinstance(latest, dict) else latest) or None
    payment.stripe_payment_intent_id = intent_id
    payment.stripe_charge_id = charge_id
    if flow == "checkout":
        payment.stripe_checkout_session_id = f"cs_test_{uuid.uuid4().hex}"
    db.add(payment)
    db.commit()
    return payment


def make_plan(
    db: Session, *, slug: str | None = None, monthly_credits: int = 300, price_cents: int = 2000,
    stripe_plan_id: str | None = None,
):
    """A committed plan on sale; its Stripe plan id is made up unless given."""
    from db.models import Plan

    n = next(_seq)
    plan = Plan(
        slug=slug or f"plan-{n}-{uuid.uuid4().hex[:6]}", name=f"Plan {n}",
        monthly_credits=monthly_credits, price_cents=price_cents, currency="USD",
        stripe_plan_id=stripe_plan_id or f"plan_test{uuid.uuid4().hex[:16]}",
    )
    db.add(plan)
    db.commit()
    return plan
