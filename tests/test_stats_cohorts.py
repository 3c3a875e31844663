"""Issue 19's figures (retention, averages, calls, peak hours, tiers, plan changes, lifetime
value) on hand-built data with known answers, empty data included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from db.base import utc_now
from db.models import ApiUsageLog, CreditGrant, Payment, Plan, PlanChange, Subscription, UsageHourly
from services.credits import grants, ledger
from services.logs import logstream, writer
from services.stats import snapshot as stats
from tests.factories import make_user

# A Wednesday noon; this ISO week began on Monday 2026-11-23, the 12 weeks on 2026-09-07.
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def use(db, user, when: str, credits: int = 1, *, record_id: uuid.UUID | None = None) -> None:
    record = logstream.UsageRecord(id=record_id or uuid.uuid4(), created_at=at(when),
                                   user_id=user.id, endpoint="/v1/x", credits=credits,
                                   status_code=200)
    writer.write_usage(db, [record])
    db.commit()


def pay(db, user, cents: int, succeeded: str, *, currency: str = "USD", credits: int = 0,
        refunded: int = 0, status: str = "succeeded") -> None:
    db.add(Payment(user_id=user.id, flow="payment_intent", status=status, amount_cents=cents,
                   currency=currency, credits=credits, refunded_cents=refunded,
                   created_at=at(succeeded),
                   succeeded_at=at(succeeded) if status != "failed" else None))
    db.commit()


def plan(db, slug: str, price: int) -> Plan:
    row = Plan(slug=slug, name=slug.title(), monthly_credits=100, price_cents=price)
    db.add(row)
    db.commit()
    return row


def subscribe(db, user, plan_row, status: str = "active") -> Subscription:
    row = Subscription(user_id=user.id, plan_id=plan_row.id, status=status)
    db.add(row)
    db.commit()
    return row


def test_every_figure_on_empty_data_is_zero_or_none(db):
    data = stats.compute(db, now=NOW)
    cohorts = data["users"]["retention"]["cohorts"]
    assert len(cohorts) == 12 and cohorts[0]["week"] == "2026-09-07"
    assert cohorts[-1] == {"week": "2026-11-23", "users": 0, "active": [0], "share": [None]}
    assert all(c["users"] == 0 and set(c["share"]) == {None} for c in cohorts)
    assert len(cohorts[0]["share"]) == 12  # sign-up week and 11 later ones
    assert {k: v for k, v in data["credits"].items() if k.startswith("avg_")} == {
        "avg_balance": None, "avg_used_per_active_user": None,
        "avg_purchased_per_paying_user": None}
    assert data["usage"]["total_calls"] == {"today": 0, "last_7d": 0, "last_30d": 0,
                                            "all_time": 0}
    assert data["usage"]["peak_hours"]["peak"] is None
    assert data["usage"]["peak_hours"]["calls"] == [[0] * 24] * 7
    assert data["subscriptions"]["tier_distribution"] == [
        {"plan": "free", "name": "No subscription", "price_cents": 0, "users": 0, "share": None}]
    assert [(w["upgrades"], w["downgrades"]) for w in data["subscriptions"]["changes"]] == [
        (0, 0)] * 12
    assert data["revenue"]["ltv"] == {"overall": {}, "by_signup_month": [],
                                      "avg_paying_lifetime_days": None}


def test_retention_counts_each_cohort_active_by_the_credits_used_each_week(db):
    a = make_user(db, created_at=at("2026-11-09T10:00:00"))
    b = make_user(db, created_at=at("2026-11-12T00:00:00"))
    make_user(db, created_at=at("2026-11-15T23:59:59"))  # Sunday: still week 11-09, never active
    d = make_user(db, created_at=at("2026-11-23T01:00:00"))
    make_user(db, created_at=at("2026-11-03T00:00:00"))  # a cohort nobody of which is active
    old = make_user(db, created_at=at("2026-09-06T23:59:59"))  # before the 12 weeks
    make_user(db, created_at=at("2026-11-25T12:00:01"))  # after now: not counted yet

    use(db, a, "2026-11-10T09:00:00")
    use(db, a, "2026-11-17T09:00:00")
    use(db, a, "2026-11-24T09:00:00")
    use(db, a, "2026-11-24T10:00:00")  # twice in a week is once active
    use(db, b, "2026-11-18T09:00:00", credits=0)  # a call that used no credits: not active
    use(db, b, "2026-11-24T09:00:00", credits=2)
    use(db, d, "2026-11-25T09:00:00")
    use(db, old, "2026-11-24T09:00:00")

    cohorts = {c["week"]: c for c in stats.compute(db, now=NOW)["users"]["retention"]["cohorts"]}
    assert cohorts["2026-11-09"] == {"week": "2026-11-09", "users": 3, "active": [1, 1, 2],
                                     "share": [0.3333, 0.3333, 0.6667]}
    assert cohorts["2026-11-16"] == {"week": "2026-11-16", "users": 0, "active": [0, 0],
                                     "share": [None, None]}
    assert cohorts["2026-11-23"] == {"week": "2026-11-23", "users": 1, "active": [1],
                                     "share": [1.0]}
    assert cohorts["2026-11-02"] == {"week": "2026-11-02", "users": 1, "active": [0, 0, 0, 0],
                                     "share": [0.0, 0.0, 0.0, 0.0]}
    assert sum(c["users"] for c in cohorts.values()) == 5


def test_one_user_gives_the_averages_of_one(db):
    solo = make_user(db, credits=70, created_at=at("2026-11-01T00:00:00"))
    use(db, solo, "2026-11-24T08:00:00", credits=9)
    pay(db, solo, 1500, "2026-11-02T00:00:00", credits=100)
    data = stats.compute(db, now=NOW)
    assert {k: v for k, v in data["credits"].items() if k.startswith("avg_")} == {
        "avg_balance": 70.0, "avg_used_per_active_user": 9.0,
        "avg_purchased_per_paying_user": 100.0}
    assert data["revenue"]["ltv"]["overall"]["USD"]["ltv_cents"] == 1500.0
    assert data["revenue"]["ltv"]["avg_paying_lifetime_days"] == 0.0  # one payment, no sub


def test_credit_averages(db):
    g = make_user(db, credits=100, created_at=at("2026-10-01T00:00:00"))
    h = make_user(db, credits=0, created_at=at("2026-10-01T00:00:00"))
    i = make_user(db, credits=50, created_at=at("2026-10-01T00:00:00"))
    use(db, g, "2026-11-24T10:00:00", credits=10)
    use(db, i, "2026-11-20T10:00:00", credits=5)
    use(db, i, "2026-11-21T10:00:00", credits=5)
    use(db, h, "2026-10-10T10:00:00", credits=40)  # 46 days ago: outside the 30 days
    pay(db, g, 1000, "2026-10-02T00:00:00", credits=100)
    pay(db, g, 1000, "2026-10-03T00:00:00", credits=200)
    pay(db, i, 1000, "2026-10-04T00:00:00", credits=300)
    pay(db, h, 1000, "2026-10-05T00:00:00", credits=500, status="failed")
    averages = {k: v for k, v in stats.compute(db, now=NOW)["credits"].items()
                if k.startswith("avg_")}
    assert averages == {"avg_balance": 50.0, "avg_used_per_active_user": 10.0,
                        "avg_purchased_per_paying_user": 300.0}


def test_total_calls_and_peak_hours_come_from_the_hourly_rollup(db):
    user = make_user(db, created_at=at("2026-09-01T00:00:00"))
    for minute in (1, 2, 3):
        use(db, user, f"2026-11-25T09:{minute:02d}:00")  # Wednesday 09h, today
    again = uuid.uuid4()
    use(db, user, "2026-11-24T14:10:00", record_id=again)  # Tuesday 14h
    use(db, user, "2026-11-24T14:10:00", record_id=again)  # re-delivered: counted once
    use(db, user, "2026-11-24T14:50:00")
    use(db, user, "2026-11-20T23:59:59")  # Friday 23h, within 7 days (from 11-19)
    use(db, user, "2026-11-18T23:59:59")  # Wednesday, 8 days back: within 30 days only
    use(db, user, "2026-10-01T00:00:00")  # all time only

    usage = stats.compute(db, now=NOW)["usage"]
    assert usage["total_calls"] == {"today": 3, "last_7d": 6, "last_30d": 7, "all_time": 8}
    grid = usage["peak_hours"]["calls"]
    assert (grid[2][9], grid[1][14], grid[4][23], grid[2][23]) == (3, 2, 1, 1)
    assert sum(map(sum, grid)) == 7
    assert usage["peak_hours"]["peak"] == {"weekday": 2, "hour": 9, "calls": 3}
    # The rollup holds what the raw log holds, hour by hour.
    raw = db.scalar(select(func.count()).select_from(ApiUsageLog))
    assert db.scalar(select(func.sum(UsageHourly.calls))) == raw == 8


def test_tiers_plan_changes_and_lifetime_value(db):
    basic, pro = plan(db, "basic", 900), plan(db, "pro", 4900)
    u1 = make_user(db, created_at=at("2026-10-05T00:00:00"))
    u2 = make_user(db, created_at=at("2026-11-02T00:00:00"))
    u3 = make_user(db, created_at=at("2026-11-10T00:00:00"))
    u4 = make_user(db, created_at=at("2026-09-01T00:00:00"))
    u5 = make_user(db, created_at=at("2026-11-20T00:00:00"))
    s1 = subscribe(db, u1, pro)
    s2 = subscribe(db, u2, basic)
    subscribe(db, u3, basic, "trialing")
    subscribe(db, u4, pro, "canceled")

    for sub, direction, status, when in (
        (s1, "upgrade", "applied", "2026-11-16T10:00:00"),
        (s2, "upgrade", "applied", "2026-11-22T23:59:59"),
        (s1, "downgrade", "scheduled", "2026-11-23T00:00:00"),
        (s2, "downgrade", "superseded", "2026-11-24T00:00:00"),  # replaced: not counted
        (s2, "upgrade", "applied", "2026-08-01T00:00:00"),  # before the 12 weeks
    ):
        db.add(PlanChange(user_id=sub.user_id, subscription_id=sub.id, from_plan_id=basic.id,
                          to_plan_id=pro.id, direction=direction, status=status,
                          effective_at=at(when), created_at=at(when)))
    db.commit()

    pay(db, u1, 1000, "2026-10-06T00:00:00")
    pay(db, u1, 1000, "2026-11-06T00:00:00", refunded=200, status="partially_refunded")
    pay(db, u2, 500, "2026-11-03T00:00:00")
    pay(db, u3, 2000, "2026-11-11T00:00:00", currency="EUR")
    pay(db, u4, 100, "2026-09-01T00:00:00")
    pay(db, u4, 100, "2026-09-11T00:00:00")
    pay(db, u5, 700, "2026-11-21T00:00:00", status="failed")

    data = stats.compute(db, now=NOW)
    assert [(t["plan"], t["users"], t["share"]) for t in
            data["subscriptions"]["tier_distribution"]] == [
        ("free", 2, 0.4), ("basic", 2, 0.4), ("pro", 1, 0.2)]
    changes = {w["week"]: (w["upgrades"], w["downgrades"])
               for w in data["subscriptions"]["changes"]}
    assert changes["2026-11-16"] == (2, 0) and changes["2026-11-23"] == (0, 1)
    assert sum(u + d for u, d in changes.values()) == 3

    ltv = data["revenue"]["ltv"]
    assert ltv["overall"] == {
        "USD": {"currency": "USD", "paying_users": 3, "net_cents": 2500, "ltv_cents": 833.33},
        "EUR": {"currency": "EUR", "paying_users": 1, "net_cents": 2000, "ltv_cents": 2000.0}}
    assert [(m["month"], m["currency"], m["paying_users"], m["ltv_cents"])
            for m in ltv["by_signup_month"]] == [
        ("2026-09", "USD", 1, 200.0), ("2026-10", "USD", 1, 1800.0),
        ("2026-11", "EUR", 1, 2000.0), ("2026-11", "USD", 1, 500.0)]
    # Live subscriptions run to now: u1 50.5 days, u2 22.5, u3 14.5; u4 ended: 10.
    assert ltv["avg_paying_lifetime_days"] == round((50.5 + 22.5 + 14.5 + 10) / 4, 2)


def test_credits_expired_and_outstanding_by_source_come_from_the_grants(db):
    user, other = make_user(db), make_user(db)
    soon = utc_now() + timedelta(days=1)
    ledger.post(db, user_id=user.id, amount=100, kind="purchase")
    ledger.post(db, user_id=user.id, amount=40, kind="bonus", expires_at=soon)
    ledger.post(db, user_id=other.id, amount=25, kind="promo", expires_at=soon)
    ledger.post(db, user_id=user.id, amount=-50, kind="usage")  # burns the bonus (40), then 10
    db.commit()
    # The promo grant lapses: its expiry row takes its 25 out.
    db.execute(update(CreditGrant).where(CreditGrant.user_id == other.id)
               .values(expires_at=utc_now() - timedelta(seconds=1)))
    assert grants.expire_user(db, other.id) == 1
    db.commit()
    figures = stats.compute(db)["credits"]["grants"]
    assert figures == {"expired_30d": 25, "expired_total": 25,
                       "outstanding_by_source": {"purchase": 90}}
    # Forty days on, the expiry is outside the 30-day window but still in the total.
    later = stats.compute(db, now=utc_now() + timedelta(days=40))["credits"]["grants"]
    assert (later["expired_30d"], later["expired_total"]) == (0, 25)


def test_the_daily_report_carries_the_figures_in_json_and_csv(db):
    from services.stats import reports

    user = make_user(db, credits=40, created_at=at("2026-11-23T08:00:00"))
    use(db, user, "2026-11-24T09:15:00", credits=4)
    use(db, user, "2026-11-25T09:00:00", credits=4)  # after the reported day
    pay(db, user, 1200, "2026-11-24T10:00:00", credits=100)
    report, _ = reports.produce(db, at("2026-11-24T00:00:00").date())
    db.commit()
    f = report.data["figures"]
    assert f["retention"]["cohorts"][-1] == {"week": "2026-11-23", "users": 1, "active": [1],
                                             "share": [1.0]}
    assert f["total_calls"] == {"today": 1, "last_7d": 1, "last_30d": 1, "all_time": 1}
    assert f["peak_hours"]["peak"] == {"weekday": 1, "hour": 9, "calls": 1}
    assert f["credits"]["avg_used_per_active_user"] == 4.0
    assert f["ltv"]["overall"]["USD"]["ltv_cents"] == 1200.0
    csv_text = reports.to_csv(report)
    for line in ("retention,2026-11-23.week0,1.0", "total_calls,all_time,1",
                 "peak_hours,Tue.09,1", "tier_distribution,free.users,1",
                 "plan_changes,2026-11-23.upgrades,0", "ltv,USD.ltv_cents,1200.0",
                 "ltv,2026-11.USD.ltv_cents,1200.0", "averages,avg_balance,40.0"):
        assert line in csv_text, line
