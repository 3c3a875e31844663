"""Admin statistics: a snapshot computed on a schedule, stored, and served as stored.

Usage figures come from ``usage_daily`` (one row per UTC day, user and endpoint,
kept by the log writer in the same transaction as the raw rows), so a snapshot
never rescans the raw usage log; the other figures are indexed range queries.

Definitions (all UTC; weeks are ISO weeks starting Monday):
- new users today / this week / this month: created since the start of the day / week / month.
- DAU / WAU / MAU: users with usage today / in the 7 / 30 days ending today.
- revenue: payments that succeeded (also those refunded later), by currency, net of the amount
  refunded from them; by day means by the day the payment succeeded (last 30 days).
- ARPU: all-time net revenue per currency divided by total users.
- churn (30 days): subscriptions canceled in the last 30 days / (active now + those).
- payment success rate (30 days): succeeded / (succeeded + failed) of payments created then;
  refund rate (30 days): share of those succeeded payments with any amount refunded.
- credits sold / used: all-time totals of the ledger (purchases and grants net of refunds;
  spends). Credits by endpoint and top users: last 30 days of usage.
- retention, averages, total calls, peak hours, tiers, plan changes, lifetime value: see
  ``services.stats.figures``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.aio import AsyncDatabase
from db.base import utc_now
from db.models import AdminStatsSnapshot
from services.stats import figures

TOP_USERS = 10
WINDOW_DAYS = 30
ACTIVE_SUBSCRIPTION = ["active", "trialing", "past_due"]
SUCCEEDED = ["succeeded", "partially_refunded", "refunded"]
# Only one snapshot computation at a time (beat and a manual refresh may overlap).
_LOCK_KEY = 0x5747_0001


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def periods(now: datetime) -> dict[str, datetime]:
    """Start instants of today, this ISO week (Monday) and this month, in UTC."""
    today = now.astimezone(UTC).date()
    return {
        "today": _day_start(today),
        "week": _day_start(today - timedelta(days=today.weekday())),
        "month": _day_start(today.replace(day=1)),
    }


_STATUSES = {"ok": SUCCEEDED, "active": ACTIVE_SUBSCRIPTION}


def _rows(session: Session, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in session.execute(text(sql), {**_STATUSES, **params})]


def _one(session: Session, sql: str, **params: Any) -> dict[str, Any]:
    return dict(session.execute(text(sql), {**_STATUSES, **params}).one()._mapping)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _users(session: Session, now: datetime) -> dict[str, Any]:
    p = periods(now)
    return _one(
        session,
        """
        SELECT count(*) AS total,
               count(*) FILTER (WHERE created_at >= :today) AS new_today,
               count(*) FILTER (WHERE created_at >= :week) AS new_this_week,
               count(*) FILTER (WHERE created_at >= :month) AS new_this_month,
               count(*) FILTER (WHERE NOT is_active) AS deactivated,
               coalesce(sum(credits_purchased), 0)::bigint AS credits_sold,
               coalesce(sum(credits_used), 0)::bigint AS credits_used,
               coalesce(sum(credit_balance), 0)::bigint AS credits_outstanding
        FROM users WHERE created_at <= :now
        """,
        now=now, **p,
    )


def _active(session: Session, today: date) -> dict[str, int]:
    return _one(
        session,
        f"""
        SELECT count(DISTINCT user_id) FILTER (WHERE day = :today) AS dau,
               count(DISTINCT user_id) FILTER (WHERE day > :today - 7) AS wau,
               count(DISTINCT user_id) AS mau, {figures.USED_30D}
        FROM usage_daily WHERE day > :today - 30 AND day <= :today
        """,  # noqa: S608 - a constant of the figures module
        today=today,
    )


def _revenue(session: Session, now: datetime, total_users: int) -> dict[str, Any]:
    totals = _rows(
        session,
        """
        SELECT currency, count(*) AS payments, sum(amount_cents)::bigint AS gross_cents,
               sum(refunded_cents)::bigint AS refunded_cents,
               sum(amount_cents - refunded_cents)::bigint AS net_cents
        FROM payments WHERE status = ANY(:ok) AND succeeded_at <= :now
        GROUP BY currency ORDER BY currency
        """,
        now=now,
    )
    by_day = _rows(
        session,
        """
        SELECT (succeeded_at AT TIME ZONE 'UTC')::date AS day, currency,
               sum(amount_cents)::bigint AS gross_cents,
               sum(refunded_cents)::bigint AS refunded_cents,
               sum(amount_cents - refunded_cents)::bigint AS net_cents
        FROM payments
        WHERE status = ANY(:ok) AND succeeded_at >= :since AND succeeded_at <= :now
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        since=periods(now)["today"] - timedelta(days=WINDOW_DAYS - 1), now=now,
    )
    for row in by_day:
        row["day"] = row["day"].isoformat()
    return {
        "all_time": {r["currency"]: r for r in totals},
        "by_day": by_day,
        "arpu_cents": {
            r["currency"]: round(r["net_cents"] / total_users, 2) if total_users else None
            for r in totals
        },
    }


def _subscriptions(session: Session, now: datetime) -> dict[str, Any]:
    by_plan = _rows(
        session,
        """
        SELECT p.slug AS plan, count(*) AS active
        FROM subscriptions s JOIN plans p ON p.id = s.plan_id
        WHERE s.status = ANY(:active) GROUP BY p.slug ORDER BY p.slug
        """,
    )
    canceled = _one(
        session,
        "SELECT count(*) AS n FROM subscriptions"
        " WHERE canceled_at > :since AND canceled_at <= :now",
        since=now - timedelta(days=WINDOW_DAYS), now=now,
    )["n"]
    active = sum(r["active"] for r in by_plan)
    return {
        "active_total": active,
        "active_by_plan": by_plan,
        "canceled_30d": canceled,
        "churn_30d": _rate(canceled, active + canceled),
    }


def _payments(session: Session, now: datetime) -> dict[str, Any]:
    row = _one(
        session,
        """
        SELECT count(*) FILTER (WHERE status = ANY(:ok)) AS succeeded,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               count(*) FILTER (WHERE status = ANY(:ok) AND refunded_cents > 0) AS refunded
        FROM payments WHERE created_at > :since AND created_at <= :now
        """,
        since=now - timedelta(days=WINDOW_DAYS), now=now,
    )
    return {
        **row,
        "success_rate_30d": _rate(row["succeeded"], row["succeeded"] + row["failed"]),
        "refund_rate_30d": _rate(row["refunded"], row["succeeded"]),
    }


def _usage(session: Session, today: date) -> dict[str, Any]:
    window = {"since": today - timedelta(days=WINDOW_DAYS - 1), "today": today}
    by_endpoint = _rows(
        session,
        """
        SELECT endpoint, sum(calls)::bigint AS calls, sum(credits)::bigint AS credits
        FROM usage_daily WHERE day >= :since AND day <= :today
        GROUP BY endpoint ORDER BY credits DESC, calls DESC, endpoint LIMIT 100
        """,
        **window,
    )
    top = _rows(
        session,
        """
        SELECT t.user_id::text AS user_id, u.email, t.calls, t.credits
        FROM (
            SELECT user_id, sum(calls)::bigint AS calls, sum(credits)::bigint AS credits
            FROM usage_daily WHERE day >= :since AND day <= :today
            GROUP BY user_id ORDER BY credits DESC, calls DESC, user_id LIMIT :n
        ) t JOIN users u ON u.id = t.user_id
        ORDER BY t.credits DESC, t.calls DESC, t.user_id
        """,
        n=TOP_USERS, **window,
    )
    return {"credits_by_endpoint_30d": by_endpoint, "top_users_30d": top}


def compute(session: Session, *, now: datetime | None = None) -> dict[str, Any]:
    """Every admin figure as of ``now`` (default: the current time), as JSON-ready data."""
    now = now or utc_now()
    today = now.astimezone(UTC).date()
    users = _users(session, now)
    active = _active(session, today)
    return {
        "as_of": now.isoformat(),
        "users": {
            **{k: users[k] for k in
               ("total", "new_today", "new_this_week", "new_this_month", "deactivated")},
            "retention": figures.retention(session, now),
        },
        "active_users": {k: active[k] for k in ("dau", "wau", "mau")},
        "revenue": {**_revenue(session, now, users["total"]),
                    "ltv": figures.lifetime_value(session, now)},
        "subscriptions": {
            **_subscriptions(session, now),
            "tier_distribution": figures.tiers(session, now, total_users=users["total"]),
            "changes": figures.plan_changes(session, now),
        },
        "payments": _payments(session, now),
        "credits": {
            **{k: users[k] for k in ("credits_sold", "credits_used", "credits_outstanding")},
            **figures.credit_averages(session, now, used=active),
            "grants": figures.grants(session, now),
        },
        "usage": figures.calls(session, now),
        **_usage(session, today),
    }


def take_snapshot(session: Session, *, now: datetime | None = None) -> AdminStatsSnapshot | None:
    """Compute and store a snapshot; None if another computation holds the lock right now."""
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _LOCK_KEY}):
        return None
    started = time.perf_counter()
    data = compute(session, now=now)
    snapshot = AdminStatsSnapshot(
        computed_at=now or utc_now(), data=data,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    session.add(snapshot)
    session.flush()
    return snapshot


def latest(session: Session) -> AdminStatsSnapshot | None:
    """The newest stored snapshot (an index lookup)."""
    return session.scalars(
        select(AdminStatsSnapshot).order_by(AdminStatsSnapshot.computed_at.desc()).limit(1)
    ).first()


# The reader's account and, only if it is an active admin's, the newest snapshot as a ready
# JSON document: one statement, so the check and the read cannot disagree.
_LATEST_FOR = text(
    """
    SELECT u.is_active, u.role, s.document
    FROM users u
    LEFT JOIN LATERAL (
        SELECT json_build_object('computed_at', computed_at, 'duration_ms', duration_ms,
                                 'data', data)::text AS document
        FROM admin_stats_snapshots ORDER BY computed_at DESC LIMIT 1
    ) s ON u.is_active AND u.role = 'admin'
    WHERE u.id = :user_id
    """
)


@dataclass(frozen=True)
class AdminRead:
    """The reader's account state and the newest snapshot ``{computed_at, duration_ms, data}``.

    ``document`` is ``None`` when there is no snapshot yet or the reader may not see it.
    """

    is_active: bool
    role: str
    document: str | None


async def latest_for(db: AsyncDatabase, user_id: uuid.UUID) -> AdminRead | None:
    """The newest snapshot for ``user_id`` if an active admin; ``None`` if no such user.

    One statement from the event loop (the admin scope, one round trip).
    """
    row = await db.fetchone(_LATEST_FOR, {"user_id": user_id}, scope="admin", user_id=user_id)
    return None if row is None else AdminRead(row.is_active, row.role, row.document)


def prune(session: Session, *, keep_days: int = 7) -> int:
    """Delete snapshots older than ``keep_days``; returns how many."""
    result = session.execute(
        text("DELETE FROM admin_stats_snapshots WHERE computed_at < :cut"),
        {"cut": utc_now() - timedelta(days=keep_days)},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
