"""Admin API: who may call it, and that its results and pages are right."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from db.models import (
    AdminActivityLog,
    AdminStatsSnapshot,
    ApiUsageLog,
    LoginHistory,
    Payment,
    User,
)
from services.logs import logstream, writer
from services.stats import reports
from services.stats import snapshot as stats
from tests.factories import auth_headers, make_user
from tests.support import wait_for

BASE = "/api/user-management/admin"
# Fixed ids: parametrized ids must be the same in every collection (pytest-xdist compares them).
NOBODY = "00000000-0000-4000-8000-000000000001"
ADMIN_GETS = ["/users", f"/users/{NOBODY}", "/payments", "/audit-log", "/usage",
              "/stats", "/reports", "/reports/1"]
ADMIN_POSTS = [f"/users/{NOBODY}/deactivate", f"/users/{NOBODY}/activate",
               "/stats/refresh"]


@pytest.fixture
def admin(db) -> User:
    return make_user(db, role="admin", email="root@example.com")


@pytest.mark.parametrize(("method", "path"), [("GET", p) for p in ADMIN_GETS]
                         + [("POST", p) for p in ADMIN_POSTS])
def test_admin_routes_refuse_anonymous_and_plain_users(client, db, method, path):
    anonymous = client.request(method, BASE + path)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    user = make_user(db)
    plain = client.request(method, BASE + path, headers=auth_headers(user))
    assert plain.status_code == 403
    assert plain.json()["error"]["code"] == "admin_required"
    assert db.scalar(select(func.count()).select_from(AdminActivityLog)) == 0


def _walk(client, admin, path: str, **params) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(BASE + path, params=query, headers=auth_headers(admin))
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_user_search_filters_and_pages(client, db, admin):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    alice = make_user(db, email="alice@example.com", full_name="Alice Liddell", credits=5,
                      created_at=base)
    make_user(db, email="bob@example.com", username="wonder_bob", created_at=base + timedelta(1))
    make_user(db, email="carol@example.com", full_name="Carol", subscription_status="active",
              created_at=base + timedelta(2))
    make_user(db, email="dan@example.com", active=False, created_at=base + timedelta(3))

    everyone = _walk(client, admin, "/users", limit=2)
    assert [len(p) for p in everyone] == [2, 2, 1]
    emails = [u["email"] for p in everyone for u in p]
    assert emails == ["root@example.com", "dan@example.com", "carol@example.com",
                      "bob@example.com", "alice@example.com"]  # newest first
    oldest = [u["email"] for p in _walk(client, admin, "/users", sort="oldest", limit=3)
              for u in p]
    assert oldest == list(reversed(emails))

    def search(**params) -> list[str]:
        return sorted(u["email"] for p in _walk(client, admin, "/users", **params) for u in p)

    assert search(q="WONDER") == ["bob@example.com"]  # username, any case
    assert search(q="liddell") == ["alice@example.com"]  # name
    assert search(q="%") == []  # wildcards are literal
    assert search(role="admin") == ["root@example.com"]
    assert search(subscription_status="active") == ["carol@example.com"]
    assert search(has_balance="true") == ["alice@example.com"]
    assert search(active="false") == ["dan@example.com"]
    assert alice.email in search(has_balance="true", q="ali")

    bad = client.get(BASE + "/users", params={"cursor": "garbage"}, headers=auth_headers(admin))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"
    assert client.get(BASE + "/users", params={"role": "god"},
                      headers=auth_headers(admin)).status_code == 422


def test_user_detail_shows_balance_payments_usage_and_logins(client, db, admin):
    user = make_user(db, credits=40)
    db.add(Payment(user_id=user.id, flow="payment_intent", status="succeeded", amount_cents=500,
                   currency="USD", credits=100))
    db.add(LoginHistory(id=uuid.uuid4(), user_id=user.id, method="password", success=True,
                        ip="198.51.100.7"))
    record = logstream.UsageRecord(id=uuid.uuid4(), created_at=datetime.now(UTC),
                                   user_id=user.id, endpoint="/v1/x", credits=3, status_code=200)
    writer.write_usage(db, [record])
    db.commit()

    body = client.get(f"{BASE}/users/{user.id}", headers=auth_headers(admin)).json()
    assert body["user"]["credit_balance"] == 40
    assert [p["amount_cents"] for p in body["payments"]] == [500]
    assert [u["endpoint"] for u in body["recent_usage"]] == ["/v1/x"]
    assert body["recent_logins"][0]["ip"] == "198.51.100.7"
    assert body["subscription"] is None

    missing = client.get(f"{BASE}/users/{uuid.uuid4()}", headers=auth_headers(admin))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "user_not_found"


def _audits(db) -> list[AdminActivityLog]:
    db.expire_all()
    return list(db.scalars(select(AdminActivityLog).order_by(AdminActivityLog.id)))


def test_deactivation_blocks_the_user_at_once_and_is_audited(client, db, admin):
    user = make_user(db)
    headers = auth_headers(user)
    assert client.get("/api/user-management/credits", headers=headers).status_code == 200

    done = client.post(f"{BASE}/users/{user.id}/deactivate", json={"reason": "fraud"},
                       headers={**auth_headers(admin), "X-Request-ID": "req-deact-1"})
    assert done.status_code == 200 and done.json()["changed"] is True
    assert client.get("/api/user-management/credits", headers=headers).status_code == 401
    spend = client.post("/api/user-management/credits/use", json={"credits": 1},
                        headers=headers)
    assert (spend.status_code, spend.json()["error"]["code"]) == (401, "invalid_token")
    again = client.post(f"{BASE}/users/{user.id}/deactivate", headers=auth_headers(admin))
    assert again.json()["changed"] is False

    audits = _audits(db)
    assert [(a.action, a.target_user_id, a.admin_id, a.reason, a.request_id) for a in audits] == [
        ("user.deactivate", user.id, admin.id, "fraud", "req-deact-1")]
    assert (audits[0].before, audits[0].after) == ({"is_active": True}, {"is_active": False})

    back = client.post(f"{BASE}/users/{user.id}/activate", headers=auth_headers(admin))
    assert back.json()["user"]["is_active"] is True
    assert client.get("/api/user-management/credits", headers=headers).status_code == 200
    assert [a.action for a in _audits(db)] == ["user.deactivate", "user.activate"]


def test_admin_cannot_deactivate_themselves_and_nothing_changes(client, db, admin):
    response = client.post(f"{BASE}/users/{admin.id}/deactivate", headers=auth_headers(admin))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "cannot_deactivate_self"
    db.expire_all()
    assert db.get(User, admin.id).is_active and _audits(db) == []
    unknown = client.post(f"{BASE}/users/{uuid.uuid4()}/deactivate", headers=auth_headers(admin))
    assert unknown.status_code == 404


def test_payments_filter_by_status_user_and_time_and_page(client, db, admin):
    alice, bob = make_user(db), make_user(db)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(5):
        db.add(Payment(user_id=alice.id if i % 2 == 0 else bob.id, flow="checkout",
                       status="succeeded" if i < 3 else "failed", amount_cents=100 * (i + 1),
                       currency="USD", credits=10, created_at=start + timedelta(days=i)))
    db.commit()

    def amounts(**params) -> list[int]:
        return [p["amount_cents"] for page in _walk(client, admin, "/payments", **params)
                for p in page]

    assert amounts(limit=2) == [500, 400, 300, 200, 100]
    assert amounts(status="failed") == [500, 400]
    assert amounts(user_id=str(alice.id)) == [500, 300, 100]
    assert amounts(since=(start + timedelta(days=1)).isoformat(),
                   until=(start + timedelta(days=3)).isoformat()) == [300, 200]
    assert client.get(BASE + "/payments", params={"since": "2026-03-01T00:00:00"},
                      headers=auth_headers(admin)).status_code == 422  # no time zone


def test_audit_log_lists_admin_changes_newest_first(client, db, admin):
    users = [make_user(db) for _ in range(3)]
    for user in users:
        client.post(f"{BASE}/users/{user.id}/deactivate", headers=auth_headers(admin))
    pages = _walk(client, admin, "/audit-log", limit=2)
    assert [len(p) for p in pages] == [2, 1]
    assert [a["target_user_id"] for p in pages for a in p] == [str(u.id) for u in
                                                                reversed(users)]
    only = _walk(client, admin, "/audit-log", target_user_id=str(users[0].id))
    assert [a["action"] for p in only for a in p] == ["user.deactivate"]


def test_usage_lists_records_and_aggregates_by_endpoint_and_day(client, db, admin):
    user, other = make_user(db), make_user(db)
    day1 = datetime(2026, 5, 1, 23, 59, tzinfo=UTC)
    day2 = datetime(2026, 5, 2, 0, 1, tzinfo=UTC)
    rows = [(user, day1, "/v1/a", 2, 200), (user, day2, "/v1/a", 3, 200),
            (other, day2, "/v1/b", 7, 500), (other, day2, "/v1/a", 1, 200)]
    writer.write_usage(db, [
        logstream.UsageRecord(id=uuid.uuid4(), created_at=when, user_id=who.id, endpoint=ep,
                              credits=c, status_code=s) for who, when, ep, c, s in rows])
    db.commit()

    listed = _walk(client, admin, "/usage", limit=3)
    assert [len(p) for p in listed] == [3, 1]
    mine = _walk(client, admin, "/usage", user_id=str(user.id))
    assert [r["credits"] for p in mine for r in p] == [3, 2]

    by_endpoint = client.get(BASE + "/usage", params={"group_by": "endpoint"},
                             headers=auth_headers(admin)).json()["groups"]
    assert by_endpoint == [
        {"endpoint": "/v1/b", "day": None, "calls": 1, "credits": 7, "errors": 1, "users": 1},
        {"endpoint": "/v1/a", "day": None, "calls": 3, "credits": 6, "errors": 0, "users": 2}]
    by_day = client.get(BASE + "/usage", params={"group_by": "day", "since_day": "2026-05-02"},
                        headers=auth_headers(admin)).json()["groups"]
    assert [(g["day"], g["calls"], g["users"]) for g in by_day] == [("2026-05-02", 3, 2)]


def test_stats_follow_the_readers_account_not_the_token(client, db, admin):
    """The role and the account state are read with the snapshot, not taken from the token."""
    stats.take_snapshot(db)
    db.commit()
    headers = auth_headers(admin)
    assert client.get(BASE + "/stats", headers=headers).status_code == 200
    admin.role = "user"
    db.commit()
    demoted = client.get(BASE + "/stats", headers=headers)
    assert (demoted.status_code, demoted.json()["error"]["code"]) == (403, "admin_required")
    admin.role, admin.is_active = "admin", False
    db.commit()
    gone = client.get(BASE + "/stats", headers=headers)
    assert (gone.status_code, gone.json()["error"]["code"]) == (401, "invalid_token")


def test_stats_serves_the_latest_snapshot_and_refresh_recomputes(client, db, admin,
                                                                  celery_worker):
    missing = client.get(BASE + "/stats", headers=auth_headers(admin))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_snapshot"

    stats.take_snapshot(db)
    db.commit()
    first = client.get(BASE + "/stats", headers=auth_headers(admin)).json()
    assert first["data"]["users"]["total"] == 1
    make_user(db)

    queued = client.post(BASE + "/stats/refresh", headers=auth_headers(admin))
    assert queued.status_code == 202

    def refreshed() -> dict | None:
        body = client.get(BASE + "/stats", headers=auth_headers(admin)).json()
        return body if body["computed_at"] != first["computed_at"] else None

    latest = wait_for(refreshed, timeout=30, message="a new snapshot")
    assert latest["data"]["users"]["total"] == 2
    assert datetime.fromisoformat(latest["computed_at"]) > datetime.fromisoformat(
        first["computed_at"])
    assert db.scalar(select(func.count()).select_from(AdminStatsSnapshot)) == 2


def test_reports_are_listed_and_downloadable_as_json_and_csv(client, db, admin):
    for offset in (3, 2, 1):
        reports.produce(db, date(2026, 6, 10) - timedelta(days=offset))
    db.commit()
    pages = _walk(client, admin, "/reports", limit=2)
    days = [r["day"] for p in pages for r in p]
    assert days == ["2026-06-09", "2026-06-08", "2026-06-07"]

    report_id = pages[0][0]["id"]
    as_json = client.get(f"{BASE}/reports/{report_id}", headers=auth_headers(admin)).json()
    assert as_json["data"]["day"] == "2026-06-09" and as_json["data"]["new_users"] == 0
    as_csv = client.get(f"{BASE}/reports/{report_id}", params={"format": "csv"},
                        headers=auth_headers(admin))
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert "report-2026-06-09.csv" in as_csv.headers["content-disposition"]
    lines = list(csv.reader(io.StringIO(as_csv.text)))
    assert lines[0] == ["section", "key", "value"] and ["day", "day", "2026-06-09"] in lines

    assert client.get(f"{BASE}/reports/999", headers=auth_headers(admin)).status_code == 404
    assert client.get(f"{BASE}/reports/{report_id}", params={"format": "xml"},
                      headers=auth_headers(admin)).status_code == 422


def test_log_all_requests_records_each_authenticated_request_once(db, settings, celery_worker):
    from api.app import create_app

    app = create_app(settings.model_copy(update={"log_all_requests": True}))
    user = make_user(db, credits=10)
    with TestClient(app) as http:
        assert http.get("/api/user-management/credits").status_code == 401
        assert http.get("/api/user-management/credits",
                        headers={**auth_headers(user), "X-Request-ID": "rq-1"}).status_code == 200
        spent = http.post("/api/user-management/credits/use", headers=auth_headers(user),
                          json={"credits": 2, "endpoint": "/v1/generate"})
        assert spent.status_code == 200

    def rows() -> list[ApiUsageLog]:
        db.expire_all()
        return list(db.scalars(select(ApiUsageLog)))

    wait_for(lambda: len(rows()) >= 2, timeout=30, message="2 usage rows")
    time.sleep(0.5)
    records = rows()
    assert len(records) == 2  # the anonymous request produced none; the spend only its own
    plain = next(r for r in records if r.request_id == "rq-1")
    assert (plain.user_id, plain.endpoint, plain.method, plain.status_code) == (
        user.id, "/api/user-management/credits", "GET", 200)
    assert plain.response_time_ms is not None and plain.response_time_ms >= 0
    assert next(r for r in records if r is not plain).credits == 2
