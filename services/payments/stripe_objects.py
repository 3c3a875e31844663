"""Reading Stripe objects (plain dicts from events or the API) and what a handler can signal.

Stripe objects change shape across API versions (an expandable field is an id or a nested
object; ``invoice.subscription`` moved under ``invoice.parent``), so they are read through
these helpers instead of indexed blindly, and handlers pass typed values on: the payment
handlers the fields they need, the subscription handlers a ``StripeSubscription`` or
``StripeInvoice`` (parsed here, like the API's answers to ``services.payments.subscriptions``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

StripeObject = dict[str, Any]


class NotReady(Exception):  # noqa: N818 - a state, not a failure
    """The event refers to something we do not know yet (retry later, with backoff)."""


class Skip(Exception):  # noqa: N818 - a decision, not a failure
    """The event needs nothing from us (not our object, nothing to change): mark it ignored."""


class Rejected(Exception):  # noqa: N818 - parks the event as failed for an operator
    """The event contradicts what we know (amount or currency mismatch): never retried."""


def ref(value: object) -> str | None:
    """The id of an expandable field, whether Stripe sent the id or the expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def metadata(obj: StripeObject) -> dict[str, str]:
    """The object's metadata (always a dict of strings, possibly empty)."""
    value = obj.get("metadata")
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def as_uuid(value: object) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is absent or not one."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def as_int(value: object) -> int | None:
    """An integer field (amounts, timestamps); None when absent or not an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def currency(obj: StripeObject) -> str | None:
    """The object's ISO currency, upper case as we store it."""
    value = obj.get("currency")
    return value.upper() if isinstance(value, str) and value else None


def invoice_subscription_id(invoice: StripeObject) -> str | None:
    """The subscription an invoice bills, in old (``subscription``) and new (``parent``) shapes."""
    direct = ref(invoice.get("subscription"))
    if direct:
        return direct
    parent = invoice.get("parent")
    if isinstance(parent, dict):
        details = parent.get("subscription_details")
        if isinstance(details, dict):
            return ref(details.get("subscription"))
    return None


def price_ids(obj: StripeObject) -> list[str]:
    """Plan and price ids named by a subscription's items or an invoice's lines."""
    found: list[str] = []
    for key in ("items", "lines"):
        container = obj.get(key)
        rows = container.get("data") if isinstance(container, dict) else None
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict):
                continue
            pricing = row.get("pricing")
            details = pricing.get("price_details") if isinstance(pricing, dict) else None
            candidates = [row.get("plan"), row.get("price")]
            if isinstance(details, dict):
                candidates.append(details.get("price"))
            for candidate in candidates:
                value = ref(candidate)
                if value and value not in found:
                    found.append(value)
    plan = ref(obj.get("plan"))
    if plan and plan not in found:
        found.append(plan)
    return found


def as_time(value: object) -> datetime | None:
    """A Unix timestamp field as an aware UTC datetime; None when absent or zero."""
    stamp = as_int(value)
    return datetime.fromtimestamp(stamp, UTC) if stamp else None


def _our_metadata(obj: StripeObject) -> dict[str, str]:
    """Our metadata on a subscription, or on an invoice (where newer API versions put the
    subscription's under ``parent.subscription_details``)."""
    meta = metadata(obj)
    parent = obj.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    if isinstance(details, dict):
        meta = {**metadata(details), **meta}
    return meta


def _period(obj: StripeObject) -> tuple[datetime | None, datetime | None]:
    """A subscription's current period (on its first item in newer API versions)."""
    start, end = obj.get("current_period_start"), obj.get("current_period_end")
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    if (start is None or end is None) and isinstance(data, list) and data:
        first = data[0] if isinstance(data[0], dict) else {}
        start, end = first.get("current_period_start"), first.get("current_period_end")
    return as_time(start), as_time(end)


def _ours(obj: StripeObject, what: str) -> dict[str, Any]:
    """What subscriptions and invoices share: their id (``Rejected`` without one), status,
    customer, our metadata and the prices they bill."""
    object_id = ref(obj.get("id"))
    if object_id is None:
        raise Rejected(f"{what} without an id")
    meta = _our_metadata(obj)
    status = obj.get("status")
    return {
        "id": object_id,
        "status": status if isinstance(status, str) else None,
        "customer": ref(obj.get("customer")),
        "user_id": as_uuid(meta.get("user_id")),
        "plan_id": as_uuid(meta.get("plan_id")),
        "price_ids": tuple(price_ids(obj)),
    }


@dataclass(frozen=True)
class StripeSubscription:
    """A Stripe subscription as we keep it, from an event or an API answer."""

    id: str
    status: str | None
    customer: str | None
    user_id: uuid.UUID | None  # our metadata
    plan_id: uuid.UUID | None  # our metadata
    price_ids: tuple[str, ...]
    cancel_at_period_end: bool
    canceled_at: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    raw: StripeObject

    @classmethod
    def parse(cls, obj: StripeObject) -> StripeSubscription:
        """``obj`` read; ``Rejected`` when it has no id."""
        start, end = _period(obj)
        return cls(
            **_ours(obj, "subscription"),
            cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
            canceled_at=as_time(obj.get("canceled_at")),
            current_period_start=start,
            current_period_end=end,
            raw=obj,
        )


@dataclass(frozen=True)
class InvoiceLine:
    """One line of an invoice: what it bills (plan and price ids) and its signed amount."""

    price_ids: tuple[str, ...]
    amount: int


@dataclass(frozen=True)
class StripeInvoice:
    """A Stripe invoice, as the subscription handlers need it (our metadata: the
    subscription's)."""

    id: str
    status: str | None
    customer: str | None
    user_id: uuid.UUID | None
    plan_id: uuid.UUID | None
    price_ids: tuple[str, ...]
    subscription_id: str | None
    amount_paid: int
    tax: int  # the part of ``amount_paid`` that is tax
    currency: str | None
    payment_intent: str | None
    billing_reason: str | None
    lines: tuple[InvoiceLine, ...]

    @classmethod
    def parse(cls, obj: StripeObject) -> StripeInvoice:
        """``obj`` read; ``Rejected`` when it has no id."""
        reason = obj.get("billing_reason")
        return cls(
            **_ours(obj, "invoice"),
            subscription_id=invoice_subscription_id(obj),
            amount_paid=as_int(obj.get("amount_paid")) or 0,
            tax=_tax(obj),
            currency=currency(obj),
            payment_intent=ref(obj.get("payment_intent")),
            billing_reason=reason if isinstance(reason, str) else None,
            lines=_lines(obj),
        )


def _lines(invoice: StripeObject) -> tuple[InvoiceLine, ...]:
    """The invoice's lines that carry an amount."""
    container = invoice.get("lines")
    rows = container.get("data") if isinstance(container, dict) else None
    lines = []
    for row in rows if isinstance(rows, list) else []:
        amount = as_int(row.get("amount")) if isinstance(row, dict) else None
        if amount is not None:
            lines.append(InvoiceLine(tuple(price_ids({"lines": {"data": [row]}})), amount))
    return tuple(lines)


def _tax(invoice: StripeObject) -> int:
    """The tax in ``amount_paid``: ``tax`` (older API versions) or the sum of ``total_taxes``."""
    older = as_int(invoice.get("tax"))
    if older is not None:
        return older
    taxes = invoice.get("total_taxes")
    if not isinstance(taxes, list):
        return 0
    return sum(as_int(t.get("amount")) or 0 for t in taxes if isinstance(t, dict))
