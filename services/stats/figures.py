"""The snapshot's figures of issue 19: retention, averages, calls, peak hours, plan tiers and
changes, lifetime value; and the grants' (issue 16): credits expired, outstanding by
source. Each reads rollups or small tables, never the raw usage log.

Definitions (UTC; weeks are ISO weeks starting Monday, named by their Monday):
- retention: the users who signed up in each of the last 12 weeks (this week included) form a
  cohort; for each week from the sign-up week (offset 0) to this week, the share of the cohort
  with credits used that week (a usage record with credits; the drain keeps the counts in
  ``usage_retention``).
- average balance: mean ``credit_balance`` over all users. Average credits used per active
  user: credits used in the 30 days ending today / users who used any then. Average purchased
  per paying user: credits of succeeded payments / users with one (all time).
- total calls: calls in ``usage_hourly`` today, in the 7 and 30 days ending today, all time.
- peak hours: calls of the 30 days ending today by UTC weekday (0 = Monday) and hour.
- tier distribution: live subscriptions (active, trialing, past due) by plan, and the users
  without one (``free``), each with its share of all users.
- plan changes: upgrades and downgrades requested in each of the last 12 weeks.
- lifetime value: per currency, succeeded payments net of refunds / users who paid in it;
  overall and by the month the users signed up. Average paying lifetime: days from a user's
  first succeeded payment to their last one, or to now while a subscription of theirs is live,
  averaged over paying users.
- grants: credits that expired (the grants whose expiry fell in the 30 days ending now, and all
  time), and the credits outstanding by source (the remaining of grants unexpired at ``now``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

WEEKS = 12
WINDOW_DAYS = 30
LIVE = ["active", "trialing", "past_due"]
SUCCEEDED = ["succeeded", "partially_refunded", "refunded"]


def _rows(session: Session, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in session.execute(text(sql), params)]


def _one(session: Session, sql: str, **params: Any) -> dict[str, Any]:
    return dict(session.execute(text(sql), params).one()._mapping)


def _start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(float(part) / float(whole), digits) if whole else None


def retention(session: Session, now: datetime) -> dict[str, Any]:
    """Weekly sign-up cohorts of the last 12 weeks and the share active in each later week."""
    today = now.astimezone(UTC).date()
    this_week = _monday(today)
    first = this_week - timedelta(weeks=WEEKS - 1)
    sizes = _rows(
        session,
        """
        SELECT (date_trunc('week', created_at AT TIME ZONE 'UTC'))::date AS week, count(*) AS n
        FROM users WHERE created_at >= :since AND created_at <= :now GROUP BY 1
        """,
        since=_start(first), now=now,
    )
    # The drain's rollup (a row per sign-up week and week of use), not the users' activity.
    active = _rows(
        session,
        """
        SELECT cohort_week AS cohort, (week - cohort_week) / 7 AS offset, active AS n
        FROM usage_retention
        WHERE cohort_week >= :first AND cohort_week <= :today AND week >= cohort_week
          AND week <= :today
        """,
        first=first, today=today,
    )
    size_of = {r["week"]: r["n"] for r in sizes}
    active_of = {(r["cohort"], r["offset"]): r["n"] for r in active}
    cohorts = []
    for i in range(WEEKS):
        week = first + timedelta(weeks=i)
        size = size_of.get(week, 0)
        later = (this_week - week).days // 7
        cohorts.append({
            "week": week.isoformat(),
            "users": size,
            "active": [active_of.get((week, k), 0) for k in range(later + 1)],
            "share": [_ratio(active_of.get((week, k), 0), size) for k in range(later + 1)],
        })
    return {"weeks": WEEKS, "cohorts": cohorts}


# Credits used in the 30 days ending today and the users who used any: the snapshot reads
# them in its scan for DAU/WAU/MAU (``snapshot._active``), the report here.
USED_30D = """
    coalesce(sum(credits) FILTER (WHERE credits > 0), 0)::bigint AS used_credits_30d,
    count(DISTINCT user_id) FILTER (WHERE credits > 0) AS used_users_30d
"""


def credit_averages(session: Session, now: datetime,
                    used: dict[str, int] | None = None) -> dict[str, float | None]:
    """Average balance, credits used per active user (30 days), purchased per paying user;
    ``used``: ``USED_30D``'s columns when the caller has them."""
    today = now.astimezone(UTC).date()
    balance = _one(session, "SELECT avg(credit_balance) AS v FROM users WHERE created_at <= :now",
                   now=now)["v"]
    used = used or _one(
        session,
        f"SELECT {USED_30D} FROM usage_daily WHERE day > :today - 30 AND day <= :today",  # noqa: S608
        today=today,
    )
    bought = _one(
        session,
        """
        SELECT coalesce(sum(credits), 0)::bigint AS credits, count(DISTINCT user_id) AS users
        FROM payments WHERE status = ANY(:ok) AND succeeded_at <= :now
        """,
        ok=SUCCEEDED, now=now,
    )
    return {
        "avg_balance": round(float(balance), 2) if balance is not None else None,
        "avg_used_per_active_user": _ratio(used["used_credits_30d"], used["used_users_30d"], 2),
        "avg_purchased_per_paying_user": _ratio(bought["credits"], bought["users"], 2),
    }


def calls(session: Session, now: datetime) -> dict[str, Any]:
    """Total calls (today, 7 and 30 days, all time) and calls by UTC weekday and hour."""
    today = _start(now.astimezone(UTC).date())
    totals = _one(
        session,
        """
        SELECT coalesce(sum(calls) FILTER (WHERE hour >= :today), 0)::bigint AS today,
               coalesce(sum(calls) FILTER (WHERE hour >= :d7), 0)::bigint AS last_7d,
               coalesce(sum(calls) FILTER (WHERE hour >= :d30), 0)::bigint AS last_30d,
               coalesce(sum(calls), 0)::bigint AS all_time
        FROM usage_hourly WHERE hour <= :now
        """,
        today=today, d7=today - timedelta(days=6), d30=today - timedelta(days=WINDOW_DAYS - 1),
        now=now,
    )
    cells = _rows(
        session,
        """
        SELECT (extract(isodow FROM hour AT TIME ZONE 'UTC'))::int - 1 AS weekday,
               (extract(hour FROM hour AT TIME ZONE 'UTC'))::int AS hour,
               sum(calls)::bigint AS calls
        FROM usage_hourly WHERE hour >= :since AND hour <= :now GROUP BY 1, 2
        """,
        since=today - timedelta(days=WINDOW_DAYS - 1), now=now,
    )
    grid = [[0] * 24 for _ in range(7)]
    for cell in cells:
        grid[cell["weekday"]][cell["hour"]] = cell["calls"]
    peak = max(((d, h) for d in range(7) for h in range(24)), key=lambda c: grid[c[0]][c[1]])
    return {
        "total_calls": totals,
        "peak_hours": {
            "days": WINDOW_DAYS,
            "calls": grid,
            "peak": ({"weekday": peak[0], "hour": peak[1], "calls": grid[peak[0]][peak[1]]}
                     if grid[peak[0]][peak[1]] else None),
        },
    }


def tiers(session: Session, now: datetime, *, total_users: int) -> list[dict[str, Any]]:
    """Live subscriptions by plan, and the users without one (``free``), with their shares."""
    rows = _rows(
        session,
        """
        SELECT p.slug AS plan, p.name, p.price_cents, count(DISTINCT s.user_id) AS users
        FROM subscriptions s JOIN plans p ON p.id = s.plan_id
        WHERE s.status = ANY(:live) GROUP BY p.slug, p.name, p.price_cents
        ORDER BY p.price_cents, p.slug
        """,
        live=LIVE,
    )
    subscribed = _one(
        session,
        "SELECT count(DISTINCT user_id) AS n FROM subscriptions WHERE status = ANY(:live)",
        live=LIVE,
    )["n"]
    free = {"plan": "free", "name": "No subscription", "price_cents": 0,
            "users": max(0, total_users - subscribed)}
    return [{**r, "share": _ratio(r["users"], total_users)} for r in [free, *rows]]


def plan_changes(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Upgrades and downgrades requested in each of the last 12 weeks (oldest first)."""
    first = _monday(now.astimezone(UTC).date()) - timedelta(weeks=WEEKS - 1)
    rows = _rows(
        session,
        """
        SELECT (date_trunc('week', created_at AT TIME ZONE 'UTC'))::date AS week,
               count(*) FILTER (WHERE direction = 'upgrade') AS upgrades,
               count(*) FILTER (WHERE direction = 'downgrade') AS downgrades
        FROM plan_changes
        WHERE created_at >= :since AND created_at <= :now AND status <> 'superseded'
        GROUP BY 1
        """,
        since=_start(first), now=now,
    )
    by_week = {r["week"]: r for r in rows}
    weeks = [first + timedelta(weeks=i) for i in range(WEEKS)]
    return [{"week": w.isoformat(),
             "upgrades": by_week[w]["upgrades"] if w in by_week else 0,
             "downgrades": by_week[w]["downgrades"] if w in by_week else 0} for w in weeks]


def lifetime_value(session: Session, now: datetime) -> dict[str, Any]:
    """Net revenue per paying user by currency, overall and by sign-up month; paying lifetime."""
    by_month = _rows(
        session,
        """
        SELECT to_char(date_trunc('month', u.created_at AT TIME ZONE 'UTC'), 'YYYY-MM') AS month,
               p.currency, count(DISTINCT p.user_id) AS paying_users,
               sum(p.amount_cents - p.refunded_cents)::bigint AS net_cents
        FROM payments p JOIN users u ON u.id = p.user_id
        WHERE p.status = ANY(:ok) AND p.succeeded_at <= :now
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        ok=SUCCEEDED, now=now,
    )
    overall: dict[str, dict[str, Any]] = {}
    for row in by_month:
        row["ltv_cents"] = round(row["net_cents"] / row["paying_users"], 2)
    totals = _rows(
        session,
        """
        SELECT currency, count(DISTINCT user_id) AS paying_users,
               sum(amount_cents - refunded_cents)::bigint AS net_cents
        FROM payments WHERE status = ANY(:ok) AND succeeded_at <= :now
        GROUP BY 1 ORDER BY 1
        """,
        ok=SUCCEEDED, now=now,
    )
    for row in totals:
        overall[row["currency"]] = {**row,
                                    "ltv_cents": round(row["net_cents"] / row["paying_users"], 2)}
    lifetime = _one(
        session,
        """
        WITH paid AS (
            SELECT user_id, min(succeeded_at) AS first, max(succeeded_at) AS last
            FROM payments WHERE status = ANY(:ok) AND succeeded_at <= :now GROUP BY user_id
        )
        SELECT avg(extract(epoch FROM
                   CASE WHEN EXISTS (SELECT 1 FROM subscriptions s
                                     WHERE s.user_id = paid.user_id AND s.status = ANY(:live))
                        THEN :now ELSE paid.last END - paid.first) / 86400) AS days,
               count(*) AS users
        FROM paid
        """,
        ok=SUCCEEDED, live=LIVE, now=now,
    )
    days = lifetime["days"]
    return {
        "overall": overall,
        "by_signup_month": by_month,
        "avg_paying_lifetime_days": round(float(days), 2) if days is not None else None,
    }


def grants(session: Session, now: datetime) -> dict[str, Any]:
    """Credits expired (30 days, all time) and outstanding by grant source, from the grants."""
    expired = _one(
        session,
        """
        SELECT coalesce(sum(expired) FILTER (WHERE expires_at > :since), 0)::bigint
                 AS expired_30d,
               coalesce(sum(expired), 0)::bigint AS expired_total
        FROM credit_grants WHERE expired > 0 AND expires_at <= :now
        """,
        since=now - timedelta(days=WINDOW_DAYS), now=now,
    )
    outstanding = _rows(
        session,
        """
        SELECT source, sum(remaining)::bigint AS credits
        FROM credit_grants
        WHERE remaining > 0 AND (expires_at IS NULL OR expires_at > :now)
        GROUP BY source ORDER BY source
        """,
        now=now,
    )
    return {**expired,
            "outstanding_by_source": {row["source"]: row["credits"] for row in outstanding}}
