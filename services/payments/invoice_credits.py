"""Credits follow money: what a paid subscription invoice grants.

Each invoice line that bills one of our plans is worth the plan's monthly credits in
proportion to its amount against the plan's price (signed: a proration's line for unused
time on the old plan is negative). The invoice grants that worth in proportion to what was
paid (``amount_paid`` less tax) of what those lines bill, so:

- a full renewal (one line at the plan's price, paid in full) grants the plan's credits;
- a coupon, a partial period or a customer balance grants its share;
- an upgrade's proration invoice (old plan's unused time, new plan's remaining time)
  grants the difference of the two plans' credits in proportion to the amount;
- a $0 invoice grants nothing, except the one that starts a subscription
  (``billing_reason: subscription_create``, a trial) on a plan with ``trial_credits``;
- an invoice in a currency that is not its plan's is refused (``Rejected``: parked).

Invoices whose lines name none of our plans are taken as one period of ``plan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import Plan
from services.payments.stripe_objects import InvoiceLine, Rejected, StripeInvoice


@dataclass(frozen=True)
class InvoiceGrant:
    """The plan an invoice is for and the credits it grants (maybe none)."""

    plan: Plan
    credits: int


def grant_for(session: Session, invoice: StripeInvoice, *, plan: Plan) -> InvoiceGrant:
    """The credits ``invoice`` grants; ``plan``: the subscription's, for lines that name none."""
    lines = _plan_lines(session, invoice.lines)
    billed_plan = max(lines, key=lambda line: line[1])[0] if lines else plan
    charged = invoice.currency or plan.currency
    for line_plan in {billed_plan, *(p for p, _ in lines)}:
        if line_plan.currency != charged:
            raise Rejected(f"invoice {invoice.id} is in {charged}, its plan "
                           f"{line_plan.slug} in {line_plan.currency}")
    if not lines:
        lines = [(plan, plan.price_cents)]
    worth = sum((Fraction(p.monthly_credits * amount, p.price_cents) for p, amount in lines
                 if p.price_cents > 0), Fraction(0))
    billed = sum(amount for _, amount in lines)
    paid = max(0, invoice.amount_paid - invoice.tax)
    if paid == 0:
        trial = invoice.billing_reason == "subscription_create"
        return InvoiceGrant(billed_plan, billed_plan.trial_credits if trial else 0)
    if billed <= 0 or worth <= 0:
        return InvoiceGrant(billed_plan, 0)
    share = min(Fraction(paid, billed), Fraction(1))  # tax aside, paying more buys no more
    return InvoiceGrant(billed_plan, math.floor(worth * share))


def _plan_lines(session: Session, lines: Sequence[InvoiceLine]) -> list[tuple[Plan, int]]:
    """(plan, amount) of each invoice line that bills one of our plans."""
    every = {i for line in lines for i in line.price_ids}
    if not every:
        return []
    plans = session.scalars(
        select(Plan).where(or_(Plan.stripe_plan_id.in_(every), Plan.stripe_price_id.in_(every)))
    ).all()
    by_id = {key: p for p in plans for key in (p.stripe_plan_id, p.stripe_price_id) if key}
    found = []
    for line in lines:
        plan = next((by_id[i] for i in line.price_ids if i in by_id), None)
        if plan is not None:
            found.append((plan, line.amount))
    return found
