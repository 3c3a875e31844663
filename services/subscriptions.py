"""Plans and subscriptions: the admin's plans, a user's subscription, and Stripe's word on it.

State comes from Stripe's subscription events. Events arrive out of order, so each
applied state records its event's ``created`` time (``stripe_event_created``) and an
older event never overwrites a newer state; ``canceled`` is final whatever the order.
Each paid invoice grants the credits it paid for once (dedupe key ``invoice:<id>``): the rule
is ``services.invoice_credits``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy import case, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import Payment, Plan, Subscription, User
from db.models.users import SUBSCRIPTION_STATUSES
from services import audit, invoice_credits, ledger, stripe_gateway
from services.errors import Conflict, InvalidInput, NotFound, UpstreamUnavailable
from services.stripe_objects import (
    NotReady,
    Rejected,
    Skip,
    StripeObject,
    as_int,
    as_uuid,
    invoice_subscription_id,
    metadata,
    price_ids,
    ref,
)
from settings import Settings

log = logging.getLogger(__name__)

TERMINAL = frozenset({"canceled", "incomplete_expired"})
# A user with one of these cannot start a second subscription.
BLOCKING = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})
_TRANSIENT = (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)


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
        with _stripe_errors():
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
    # Serialise a user's subscription starts: the check below must not race itself.
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    existing = current(session, user.id)
    if existing is not None and existing.status in BLOCKING:
        raise Conflict("you already have a subscription", code="subscription_exists")
    meta = {"user_id": str(user.id), "plan_id": str(plan.id)}
    client = stripe_gateway.client(settings)
    with _stripe_errors(payment_method=payment_method):
        customer_id = _ensure_customer(session, client, user, payment_method)
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
        item = {"plan": plan.stripe_plan_id} if plan.stripe_plan_id else {"price": price}
        params: dict[str, Any] = {"customer": customer_id, "items": [item], "metadata": meta}
        created = client.v1.subscriptions.create(params=params)  # type: ignore[arg-type]
    obj = created.to_dict(for_json=True)
    row = _upsert(session, obj, user_id=user.id, plan_id=plan.id)
    if row.stripe_event_created is None:
        # No event applied yet: the API's answer is the best state we have.
        _apply_fields(session, row, obj, status=str(obj.get("status")))
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
    with _stripe_errors():
        if immediately:
            answer = client.v1.subscriptions.cancel(row.stripe_subscription_id)
        else:
            answer = client.v1.subscriptions.update(
                row.stripe_subscription_id, params={"cancel_at_period_end": True}
            )
    obj = answer.to_dict(for_json=True)
    # Stripe's answer is newer than any event we applied, but it carries no event time:
    # apply it without moving the watermark, so the events that follow still apply.
    status = "canceled" if immediately else str(obj.get("status") or row.status)
    _apply_fields(session, row, obj, status=status)
    if not immediately:
        row.cancel_at_period_end = True
    _sync_user(session, user.id)
    return row


def _ensure_customer(
    session: Session, client: stripe.StripeClient, user: User, payment_method: str | None
) -> str:
    invoice_settings = {"default_payment_method": payment_method} if payment_method else None
    if user.stripe_customer_id:
        if payment_method:
            client.v1.payment_methods.attach(
                payment_method, params={"customer": user.stripe_customer_id}
            )
            client.v1.customers.update(
                user.stripe_customer_id,
                params={"invoice_settings": invoice_settings},  # type: ignore[arg-type]
            )
        return user.stripe_customer_id
    params: dict[str, Any] = {"metadata": {"user_id": str(user.id)}}
    if user.email:
        params["email"] = user.email
    if payment_method:
        params["payment_method"] = payment_method
        params["invoice_settings"] = invoice_settings
    customer = client.v1.customers.create(params=params)  # type: ignore[arg-type]
    session.execute(
        update(User)
        .where(User.id == user.id, User.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer.id)
        .execution_options(synchronize_session=False)
    )
    session.expire(user, ["stripe_customer_id"])
    return customer.id


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


@contextmanager
def _stripe_errors(payment_method: str | None = None) -> Iterator[None]:
    """Stripe's failures as our errors: down is 503, a declined card or a client's payment
    method that Stripe does not know (or cannot use) is 400, any other refusal 503."""
    try:
        yield
    except _TRANSIENT as exc:
        log.warning("stripe unavailable", extra={"error": type(exc).__name__})
        raise UpstreamUnavailable(
            "Stripe cannot be reached right now; nothing changed, retry later",
            code="stripe_unavailable",
        ) from None
    except stripe.CardError as exc:
        raise InvalidInput(
            exc.user_message or "the card was declined", code="card_declined"
        ) from None
    except stripe.StripeError as exc:
        if payment_method is not None and _refuses_payment_method(exc):
            raise InvalidInput(
                "the payment method does not exist or cannot be used",
                code="invalid_payment_method",
            ) from None
        log.error("stripe refused", extra={"error": type(exc).__name__, "stripe_code": exc.code})
        raise UpstreamUnavailable(
            "the payment provider refused the request", code="stripe_error"
        ) from None


def _refuses_payment_method(exc: stripe.StripeError) -> bool:
    """Stripe refused the request because of the payment method the client named."""
    return isinstance(exc, stripe.InvalidRequestError) and (
        "payment_method" in (exc.param or "") or exc.code == "resource_missing"
        or exc.http_status == 404
    )


# --- Stripe's events ------------------------------------------------------------------------


def apply_event_state(
    session: Session, obj: StripeObject, *, event_created: int, deleted: bool = False
) -> Subscription:
    """Apply a ``customer.subscription.*`` event's state unless a newer one was applied."""
    stripe_id = ref(obj.get("id"))
    status = "canceled" if deleted else obj.get("status")
    if not stripe_id or status not in SUBSCRIPTION_STATUSES:
        raise Rejected(f"subscription event with id {stripe_id!r} and status {status!r}")
    row = _locked(session, stripe_id)
    if row is None:
        user_id = _owner(session, obj)
        plan = _plan_of(session, obj)
        if plan is None:
            raise Rejected(f"subscription {stripe_id} is for a plan we do not sell")
        row = _upsert(session, obj, user_id=user_id, plan_id=plan.id)
    if not _is_newer(row, event_created=event_created, status=str(status)):
        return row
    _apply_fields(session, row, obj, status=str(status))
    row.stripe_event_created = max(event_created, row.stripe_event_created or 0)
    _sync_user(session, row.user_id)
    return row


def grant_invoice(session: Session, invoice: StripeObject) -> ledger.Entry | None:
    """Grant what a paid subscription invoice paid for (``invoice_credits``), once per invoice."""
    invoice_id = ref(invoice.get("id"))
    if not invoice_id:
        raise Rejected("invoice without an id")
    if invoice.get("status") not in (None, "paid"):
        raise Skip(f"invoice {invoice_id} is {invoice.get('status')}, not paid")
    stripe_sub = invoice_subscription_id(invoice)
    if stripe_sub is None:
        raise Skip(f"invoice {invoice_id} bills no subscription")
    row = session.scalar(
        select(Subscription).where(Subscription.stripe_subscription_id == stripe_sub)
    )
    # The plan is the one the invoice's lines bill, whatever the subscription is on by the
    # time this event is processed (an upgrade's event may come first); failing that, the
    # subscription's, or, before its own event arrived, our metadata.
    billed = _plan_of(session, invoice, use_metadata=row is None)
    if row is not None:
        user_id, plan = row.user_id, billed or session.get(Plan, row.plan_id)
    else:
        user_id, plan = _owner(session, invoice, not_ours=NotReady), billed
    if plan is None:
        raise NotReady(f"plan of subscription {stripe_sub} not known yet")
    grant = invoice_credits.grant_for(session, invoice, plan=plan)
    amount_paid = as_int(invoice.get("amount_paid")) or 0
    if amount_paid == 0 and grant.credits == 0:
        raise Skip(f"invoice {invoice_id} paid nothing and grants nothing")
    if amount_paid > 0:
        session.execute(
            insert(Payment)
            .values(
                user_id=user_id,
                plan_id=grant.plan.id,
                flow="subscription",
                status="succeeded",
                amount_cents=amount_paid,
                currency=grant.plan.currency,
                credits=grant.credits,
                stripe_invoice_id=invoice_id,
                stripe_payment_intent_id=ref(invoice.get("payment_intent")),
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
        reference_id=invoice_id,
        dedupe_key=f"invoice:{invoice_id}",
        description=f"{grant.credits} credits for plan {grant.plan.slug}",
    )


def invoice_failed(session: Session, invoice: StripeObject, *, event_created: int) -> None:
    """A failed renewal makes a live subscription past due (unless a newer state says else)."""
    stripe_sub = invoice_subscription_id(invoice)
    row = _locked(session, stripe_sub) if stripe_sub else None
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
    session: Session, obj: StripeObject, *, user_id: uuid.UUID, plan_id: uuid.UUID
) -> Subscription:
    """The row for a Stripe subscription, inserted if new (concurrent events insert once)."""
    stripe_id = ref(obj.get("id"))
    assert stripe_id is not None
    status = obj.get("status")
    session.execute(
        insert(Subscription)
        .values(
            user_id=user_id,
            plan_id=plan_id,
            stripe_subscription_id=stripe_id,
            status=status if status in SUBSCRIPTION_STATUSES else "incomplete",
        )
        .on_conflict_do_nothing(index_elements=["stripe_subscription_id"])
    )
    row = _locked(session, stripe_id)
    assert row is not None
    return row


def _apply_fields(session: Session, row: Subscription, obj: StripeObject, *, status: str) -> None:
    row.status = status
    row.cancel_at_period_end = bool(obj.get("cancel_at_period_end"))
    row.canceled_at = _time(obj.get("canceled_at")) or (
        row.canceled_at or utc_now() if status == "canceled" else None
    )
    start, end = _period(obj)
    row.current_period_start = start or row.current_period_start
    row.current_period_end = end or row.current_period_end
    plan = _plan_of(session, obj, use_metadata=False)
    if plan is not None:
        row.plan_id = plan.id
    row.raw = obj
    session.flush()


def _period(obj: StripeObject) -> tuple[datetime | None, datetime | None]:
    start, end = obj.get("current_period_start"), obj.get("current_period_end")
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    if (start is None or end is None) and isinstance(data, list) and data:
        first = data[0] if isinstance(data[0], dict) else {}
        start, end = first.get("current_period_start"), first.get("current_period_end")
    return _time(start), _time(end)


def _time(value: object) -> datetime | None:
    stamp = as_int(value)
    return datetime.fromtimestamp(stamp, UTC) if stamp else None


def _owner(session: Session, obj: StripeObject, *, not_ours: type[Exception] = Skip) -> uuid.UUID:
    """The user a subscription or invoice belongs to: our metadata, else the Stripe customer."""
    meta = metadata(obj)
    parent = obj.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if isinstance(details, dict):
        meta = {**metadata(details), **meta}
    user_id = as_uuid(meta.get("user_id"))
    if user_id is not None and session.get(User, user_id) is not None:
        return user_id
    customer = ref(obj.get("customer"))
    found = user_of_customer(session, customer)
    if found is None:
        raise not_ours(f"customer {customer!r} is no user of ours")
    return found


def user_of_customer(session: Session, customer: str | None) -> uuid.UUID | None:
    """Our user whose Stripe customer ``customer`` is; None for a stranger's (or none)."""
    if not customer:
        return None
    return session.scalar(select(User.id).where(User.stripe_customer_id == customer))


def _plan_of(session: Session, obj: StripeObject, *, use_metadata: bool = True) -> Plan | None:
    """The plan an object's items or lines name; our metadata as the fallback."""
    ids = price_ids(obj)
    if ids:
        plan = session.scalars(
            select(Plan).where((Plan.stripe_plan_id.in_(ids)) | (Plan.stripe_price_id.in_(ids)))
        ).first()
        if plan is not None:
            return plan
    if use_metadata:
        plan_id = as_uuid(metadata(obj).get("plan_id"))
        if plan_id is not None:
            return session.get(Plan, plan_id)
    return None


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
        .execution_options(synchronize_session=False)
    )
    user = session.identity_map.get(session.identity_key(User, user_id))
    if user is not None:
        session.expire(user, ["subscription_status", "subscription_plan_id"])
