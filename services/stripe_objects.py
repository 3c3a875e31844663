"""Reading Stripe objects (plain dicts from events or the API) and what a handler can signal.

Stripe objects change shape across API versions (an expandable field is an id or a nested
object; ``invoice.subscription`` moved under ``invoice.parent``), so handlers read them
through these helpers instead of indexing blindly.
"""

from __future__ import annotations

import uuid
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
