"""Daily reports: one per UTC day, produced once, downloadable as JSON or CSV.

Figures for day D (UTC): revenue of the payments that succeeded on D, by currency, with
the amount refunded from them so far and the net; credits refunded on D (ledger refund
entries); new users; active users (any usage); credits sold (purchases and subscription
grants) and used (spends) on D from the ledger; the top endpoints by credits.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.base import utc_now
from db.models import DailyReport
from services.errors import NotFound
from services.pagination import Page, paginate

TOP_ENDPOINTS = 10
_LOCK_NAMESPACE = 0x5245_5054  # advisory lock space of report production ("REPT")
_SUCCEEDED = ["succeeded", "partially_refunded", "refunded"]


def _bounds(day: date) -> dict[str, Any]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"start": start, "end": start + timedelta(days=1), "day": day}


def compute(session: Session, day: date) -> dict[str, Any]:
    """The report figures of one UTC day."""
    b = {**_bounds(day), "ok": _SUCCEEDED, "top": TOP_ENDPOINTS}

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in session.execute(text(sql), b)]

    revenue = rows(
        """
        SELECT currency, count(*) AS payments, sum(amount_cents)::bigint AS gross_cents,
               sum(refunded_cents)::bigint AS refunded_cents,
               sum(amount_cents - refunded_cents)::bigint AS net_cents
        FROM payments
        WHERE status = ANY(:ok) AND succeeded_at >= :start AND succeeded_at < :end
        GROUP BY currency ORDER BY currency
        """
    )
    ledger = rows(
        """
        SELECT coalesce(sum(amount) FILTER (WHERE kind IN ('purchase', 'subscription_grant')), 0)
                   ::bigint AS credits_sold,
               coalesce(-sum(amount) FILTER (WHERE kind = 'usage'), 0)::bigint AS credits_used,
               coalesce(-sum(amount) FILTER (WHERE kind = 'refund'), 0)::bigint
                   AS credits_refunded,
               count(*) FILTER (WHERE kind = 'refund') AS refunds
        FROM credit_transactions WHERE created_at >= :start AND created_at < :end
        """
    )[0]
    people = rows(
        """
        SELECT (SELECT count(*) FROM users WHERE created_at >= :start AND created_at < :end)
                   AS new_users,
               (SELECT count(DISTINCT user_id) FROM usage_daily WHERE day = :day) AS active_users
        """
    )[0]
    endpoints = rows(
        """
        SELECT endpoint, sum(calls)::bigint AS calls, sum(credits)::bigint AS credits
        FROM usage_daily WHERE day = :day
        GROUP BY endpoint ORDER BY credits DESC, calls DESC, endpoint LIMIT :top
        """
    )
    return {
        "day": day.isoformat(),
        "revenue": revenue,
        "refunds": {"count": ledger["refunds"], "credits": ledger["credits_refunded"],
                    "cents_by_currency": {r["currency"]: r["refunded_cents"] for r in revenue}},
        "new_users": people["new_users"],
        "active_users": people["active_users"],
        "credits_sold": ledger["credits_sold"],
        "credits_used": ledger["credits_used"],
        "top_endpoints": endpoints,
    }


def produce(session: Session, day: date) -> tuple[DailyReport, bool]:
    """The report of ``day``, computed and stored unless it exists; (report, created now)."""
    # Serialise producers of the same day so a second run neither recomputes nor duplicates.
    session.execute(text("SELECT pg_advisory_xact_lock(:ns, :d)"),
                    {"ns": _LOCK_NAMESPACE, "d": day.toordinal()})
    existing = session.scalars(select(DailyReport).where(DailyReport.day == day)).first()
    if existing is not None:
        return existing, False
    inserted = session.scalars(
        insert(DailyReport).values(day=day, data=compute(session, day))
        .on_conflict_do_nothing(index_elements=["day"]).returning(DailyReport)
    ).first()
    if inserted is None:  # produced by a run that did not take the lock (never by ours)
        return session.scalars(select(DailyReport).where(DailyReport.day == day)).one(), False
    return inserted, True


def produce_due(session: Session, *, now: datetime | None = None) -> date:
    """Produce yesterday's report (UTC) if not produced yet; returns the day."""
    day = (now or utc_now()).astimezone(UTC).date() - timedelta(days=1)
    produce(session, day)
    return day


def list_reports(session: Session, *, limit: int, cursor: str | None) -> Page[DailyReport]:
    """Stored reports, newest first."""
    return paginate(session, select(DailyReport), key=(DailyReport.created_at, DailyReport.id),
                    limit=limit, cursor=cursor)


def get(session: Session, report_id: int) -> DailyReport:
    """One stored report; NotFound otherwise."""
    report = session.get(DailyReport, report_id)
    if report is None:
        raise NotFound("no such report", code="report_not_found")
    return report


# OWASP's list of what a spreadsheet may take for the start of a formula: a tab or carriage
# return first is skipped by some programs, which then read the '=' behind it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class SafeWriter:
    """A CSV writer that keeps spreadsheet programs from running cell text as a formula."""

    def __init__(self, out: io.StringIO) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: list[Any]) -> None:
        """Write ``row``, a text cell that could start a formula quoted with a leading '."""
        self._writer.writerow(
            ["'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v for v in row]
        )


def to_csv(report: DailyReport) -> str:
    """The report flattened to ``section,key,value`` lines."""
    out = io.StringIO()
    writer = SafeWriter(out)
    writer.writerow(["section", "key", "value"])
    data = report.data
    writer.writerow(["day", "day", data["day"]])
    for row in data["revenue"]:
        for key in ("payments", "gross_cents", "refunded_cents", "net_cents"):
            writer.writerow(["revenue", f"{row['currency']}.{key}", row[key]])
    writer.writerow(["refunds", "count", data["refunds"]["count"]])
    writer.writerow(["refunds", "credits", data["refunds"]["credits"]])
    for key in ("new_users", "active_users", "credits_sold", "credits_used"):
        writer.writerow(["totals", key, data[key]])
    for row in data["top_endpoints"]:
        writer.writerow(["top_endpoints", f"{row['endpoint']}.calls", row["calls"]])
        writer.writerow(["top_endpoints", f"{row['endpoint']}.credits", row["credits"]])
    return out.getvalue()
