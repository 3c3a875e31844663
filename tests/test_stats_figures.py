"""Admin statistics and daily reports from a known data set, against hand-computed figures."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from db.base import utc_now
from db.engine import get_sessionmaker
from db.models import DailyReport, IntegrityCheck, Payment, Plan, Subscription
from services import task_queue
from services.credits import ledger
from services.logs import logstream, writer
from services.stats import reports
from services.stats import snapshot as stats
from tests.factories import make_user
from tests.support import wait_for

# A Monday, half an hour into the ISO week.
NOW = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def usage(db, user, when: str, endpoint: str, credits: int, *, status: int = 200) -> None:
    """A usage record written through the batch writer, with its producer timestamp."""
    record = logstream.UsageRecord(id=uuid.uuid4(), created_at=at(when), user_id=user.id,
                                   endpoint=endpoint, credits=credits, status_code=status)
    writer.write_usage(db, [record])
    db.commit()


def payment(db, user, *, cents: int, currency: str = "USD", status: str = "succeeded",
            created: str, succeeded: str | None = None, refunded: int = 0) -> Payment:
    row = Payment(user_id=user.id, flow="payment_intent", status=status, amount_cents=cents,
                  currency=currency, credits=cents, refunded_cents=refunded,
                  created_at=at(created), succeeded_at=at(succeeded) if succeeded else None)
    db.add(row)
    db.commit()
    return row


def plan(db, slug: str) -> Plan:
    row = Plan(slug=slug, name=slug.title(), monthly_credits=100, price_cents=900)
    db.add(row)
    db.commit()
    return row


def subscription(db, user, plan_row, status: str, canceled: str | None = None) -> None:
    db.add(Subscription(user_id=user.id, plan_id=plan_row.id, status=status,
                        canceled_at=at(canceled) if canceled else None))
    db.commit()


def build_data_set(db) -> dict[str, object]:
    u1 = make_user(db, created_at=at("2026-11-23T00:10:00"))
    u2 = make_user(db, created_at=at("2026-11-23T00:00:00"))  # the first instant of the week
    u3 = make_user(db, created_at=at("2026-11-22T23:59:59"))  # Sunday: last week
    u4 = make_user(db, created_at=at("2026-11-01T00:00:00"))
    u5 = make_user(db, created_at=at("2026-10-31T23:59:59"))  # last month

    usage(db, u1, "2026-11-23T00:01:00", "/v1/a", 5)
    usage(db, u1, "2026-11-23T00:02:00", "/v1/a", 5)
    usage(db, u2, "2026-11-23T00:20:00", "/v1/a", 0, status=500)
    usage(db, u3, "2026-11-22T23:59:00", "/v1/b", 3)
    usage(db, u4, "2026-11-17T08:00:00", "/v1/a", 1)   # 6 days ago: in WAU
    usage(db, u5, "2026-11-16T08:00:00", "/v1/b", 10)  # 7 days ago: MAU only
    usage(db, u2, "2026-10-24T12:00:00", "/v1/c", 100)  # 30 days ago: outside MAU

    payment(db, u1, cents=1000, status="partially_refunded", refunded=300,
            created="2026-11-23T00:04:00", succeeded="2026-11-23T00:05:00")
    payment(db, u3, cents=2000, currency="EUR",
            created="2026-11-22T11:59:00", succeeded="2026-11-22T12:00:00")
    payment(db, u4, cents=500, status="refunded", refunded=500,
            created="2026-11-01T10:00:00", succeeded="2026-11-01T10:01:00")
    payment(db, u4, cents=700, status="failed", created="2026-11-20T10:00:00")
    payment(db, u5, cents=900, created="2026-09-01T10:00:00", succeeded="2026-09-01T10:01:00")
    payment(db, u5, cents=400, status="pending", created="2026-11-22T10:00:00")

    pro, basic = plan(db, "pro"), plan(db, "basic")
    subscription(db, u1, pro, "active")
    subscription(db, u3, basic, "trialing")
    subscription(db, u4, pro, "canceled", canceled="2026-11-10T00:00:00")
    subscription(db, u5, basic, "canceled", canceled="2026-10-01T00:00:00")  # > 30 days ago

    ledger.post(db, user_id=u1.id, amount=100, kind="purchase", reference_type="test")
    ledger.post(db, user_id=u1.id, amount=-30, kind="usage", description="t", endpoint="/v1/a")
    ledger.post(db, user_id=u1.id, amount=-10, kind="refund", reference_type="test")
    db.commit()
    return {"u1": u1, "u2": u2, "u3": u3, "u4": u4, "u5": u5}


def test_snapshot_matches_hand_computed_figures(db):
    users = build_data_set(db)
    data = stats.compute(db, now=NOW)

    assert {k: v for k, v in data["users"].items() if k != "retention"} == {"total": 5, "new_today": 2, "new_this_week": 2,
                             "new_this_month": 4, "deactivated": 0}
    assert data["active_users"] == {"dau": 2, "wau": 4, "mau": 5}
    revenue = data["revenue"]
    assert revenue["all_time"]["USD"] == {"currency": "USD", "payments": 3, "gross_cents": 2400,
                                          "refunded_cents": 800, "net_cents": 1600}
    assert revenue["all_time"]["EUR"]["net_cents"] == 2000
    assert revenue["arpu_cents"] == {"EUR": 400.0, "USD": 320.0}
    assert [(d["day"], d["currency"], d["net_cents"]) for d in revenue["by_day"]] == [
        ("2026-11-01", "USD", 0), ("2026-11-22", "EUR", 2000), ("2026-11-23", "USD", 700)]
    assert {k: v for k, v in data["subscriptions"].items()
            if k not in ("tier_distribution", "changes")} == {
        "active_total": 2, "active_by_plan": [{"plan": "basic", "active": 1},
                                              {"plan": "pro", "active": 1}],
        "canceled_30d": 1, "churn_30d": 0.3333}
    assert data["payments"] == {"succeeded": 3, "failed": 1, "refunded": 2,
                                "success_rate_30d": 0.75, "refund_rate_30d": 0.6667}
    assert {k: v for k, v in data["credits"].items() if not k.startswith("avg_")} == {
        "credits_sold": 90, "credits_used": 30, "credits_outstanding": 60,
        # what is outstanding, by the source of the grants that hold it
        "grants": {"expired_30d": 0, "expired_total": 0, "outstanding_by_source": {"purchase": 60}}}
    assert data["credits_by_endpoint_30d"] == [
        {"endpoint": "/v1/b", "calls": 2, "credits": 13},
        {"endpoint": "/v1/a", "calls": 4, "credits": 11}]
    top = [(r["user_id"], r["credits"], r["calls"]) for r in data["top_users_30d"]]
    ids = {k: str(u.id) for k, u in users.items()}
    assert top == [(ids["u1"], 10, 2), (ids["u5"], 10, 1), (ids["u3"], 3, 1),
                   (ids["u4"], 1, 1), (ids["u2"], 0, 1)]


def test_week_and_month_boundaries_are_utc(db):
    make_user(db, created_at=at("2026-11-29T23:59:59"))  # Sunday: same ISO week as Monday 23rd
    make_user(db, created_at=at("2026-11-30T00:00:00"))  # next Monday
    sunday_night = stats.compute(db, now=at("2026-11-29T23:59:59.5"))["users"]
    monday = stats.compute(db, now=at("2026-11-30T00:00:01"))["users"]
    december = stats.compute(db, now=at("2026-12-01T00:00:00"))["users"]
    assert (sunday_night["new_this_week"], sunday_night["total"]) == (1, 1)
    assert (monday["new_today"], monday["new_this_week"], monday["new_this_month"]) == (1, 1, 2)
    assert (december["new_this_week"], december["new_this_month"]) == (1, 0)


def test_snapshot_is_stored_with_computed_at_and_latest_is_served(db):
    build_data_set(db)
    first = stats.take_snapshot(db, now=NOW - timedelta(minutes=1))
    second = stats.take_snapshot(db, now=NOW)
    db.commit()
    assert first is not None and second is not None
    assert stats.latest(db).id == second.id
    assert stats.latest(db).data["users"]["total"] == 5


def test_daily_report_matches_hand_computed_figures(db):
    build_data_set(db)
    report, created = reports.produce(db, at("2026-11-22T00:00:00").date())
    db.commit()
    assert created
    assert report.data["revenue"] == [{"currency": "EUR", "payments": 1, "gross_cents": 2000,
                                       "refunded_cents": 0, "net_cents": 2000}]
    assert (report.data["new_users"], report.data["active_users"]) == (1, 1)
    assert report.data["top_endpoints"] == [{"endpoint": "/v1/b", "calls": 1, "credits": 3}]

    monday = reports.compute(db, at("2026-11-23T00:00:00").date())
    assert monday["revenue"][0]["net_cents"] == 700
    assert monday["refunds"]["cents_by_currency"] == {"USD": 300}
    assert (monday["new_users"], monday["active_users"]) == (2, 2)
    # The ledger rows of the data set were written today (real clock).
    today = reports.compute(db, utc_now().date())
    assert (today["credits_sold"], today["credits_used"]) == (100, 30)
    assert (today["refunds"]["count"], today["refunds"]["credits"]) == (1, 10)

    csv_text = reports.to_csv(report)
    assert "revenue,EUR.net_cents,2000" in csv_text
    assert "top_endpoints,/v1/b.credits,3" in csv_text


def _reports(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(DailyReport)) or 0


def test_report_is_produced_once_when_run_twice_and_concurrently(db, settings):
    build_data_set(db)
    day = at("2026-11-22T00:00:00").date()
    results: list[tuple[int, bool]] = []

    def run() -> None:
        with get_sessionmaker(settings.database_url).begin() as session:
            report, created = reports.produce(session, day)
            results.append((report.id, created))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    run()
    assert _reports(db) == 1
    assert len({rid for rid, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_report_task_fired_twice_by_beat_produces_one_report(db, settings, celery_worker):
    task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(settings.redis_url)))
    task_queue.send_now("reports.daily")
    task_queue.send_now("reports.daily")
    wait_for(lambda: _reports(db) >= 1, timeout=30, message="yesterday's report")
    task_queue.send_now("maintenance.check_ledger")  # a marker behind both
    wait_for(lambda: db.scalar(select(func.count()).select_from(IntegrityCheck)),
             timeout=30, message="the marker task")
    assert _reports(db) == 1
    report = db.scalars(select(DailyReport)).one()
    assert report.day == utc_now().date() - timedelta(days=1)


def test_csv_cells_that_could_start_a_formula_are_quoted_tab_and_cr_included():
    """OWASP's list: = + - @, and a tab or carriage return that a spreadsheet skips first."""
    import csv
    import io

    out = io.StringIO()
    cells = ["=1+2", "+1", "-1", "@SUM(A1)", "\t=1+2", "\r=1+2", "/v1/ok", -5]
    reports.SafeWriter(out).writerow(cells)

    written = next(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert written == ["'=1+2", "'+1", "'-1", "'@SUM(A1)", "'\t=1+2", "'\r=1+2", "/v1/ok", "-5"]


def test_an_endpoint_named_like_a_tab_formula_is_quoted_in_the_daily_report(db):
    user = make_user(db)
    usage(db, user, "2026-11-22T10:00:00", "\t=1+2", 1)
    report, _ = reports.produce(db, at("2026-11-22T00:00:00").date())
    db.commit()

    assert "'\t=1+2.calls" in reports.to_csv(report)
