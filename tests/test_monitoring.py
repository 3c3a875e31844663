"""Metrics, their protection, the alert rules and the health page (issue 21).

The API is the test process's; the Celery worker is the session's real worker process. Both
write their metrics to the shared multiprocess directory, and ``GET /metrics`` adds them up.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from db.base import utc_now
from db.models import StripeEvent
from services import task_queue
from tests.factories import auth_headers, make_payment, make_user
from tests.stripe_events import deliver, event, payment_intent
from tests.support import ARTIFACTS, ROOT, wait_for
from tests.test_dashboard_e2e import ADMIN_PASSWORD, password_hash, sign_in

TOKEN = "metrics-token-for-the-tests-0123456789"  # noqa: S105 (a test setting)
SPEND = "/api/user-management/credits/use"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@pytest.fixture(scope="module")
def guarded(settings):
    """A client of an app whose /metrics wants the token."""
    from api.app import create_app

    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def scrape(client) -> tuple[str, dict[tuple[str, frozenset], float]]:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return answer.text, samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_after_real_requests_and_tasks(guarded, celery_worker, db):
    user = make_user(db, credits=5)
    payment = make_payment(db, user)
    _, before = scrape(guarded)

    assert guarded.post(SPEND, json={"credits": 3, "description": "x", "endpoint": "/v1/a"},
                        headers=auth_headers(user)).status_code == 200
    assert guarded.post(SPEND, json={"credits": 3, "description": "x", "endpoint": "/v1/a"},
                        headers=auth_headers(user)).status_code == 402
    succeeded = event("payment_intent.succeeded", payment_intent(payment))
    assert deliver(guarded, succeeded).status_code == 200
    task_queue.send_now("maintenance.check_ledger")

    def moved():
        # This event's own processing first, not just any (the session's worker may finish
        # another test's task meanwhile): the pending gauge below is read from its row.
        db.expire_all()
        ours = db.get(StripeEvent, succeeded["id"]).status != "pending"
        _, after = scrape(guarded)
        done = ours and value(after, "billing_stripe_events_handled_total",
                              outcome="processed") > value(
            before, "billing_stripe_events_handled_total", outcome="processed")
        checked = value(after, "billing_tasks_total", task="maintenance.check_ledger",
                        outcome="succeeded") > value(
            before, "billing_tasks_total", task="maintenance.check_ledger", outcome="succeeded")
        recorded = value(after, "billing_ledger_integrity_last_check_timestamp_seconds") > 0
        return after if done and checked and recorded else None

    after = wait_for(moved, timeout=20, message="the worker's metrics in the API's scrape")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The API's own: the spend, the refusal, the requests by template and status class.
    assert delta("billing_spends_total") == 1
    assert delta("billing_credits_spent_total") == 3
    assert delta("billing_insufficient_credits_total", operation="spend") == 1
    assert delta("billing_http_requests_total", method="POST", route=SPEND, status="2xx") == 1
    assert delta("billing_http_requests_total", method="POST", route=SPEND, status="4xx") == 1
    assert delta("billing_http_request_duration_seconds_count", method="POST", route=SPEND,
                 status="2xx") == 1
    assert delta("billing_stripe_events_received_total", type="payment_intent.succeeded",
                 delivery="new") == 1
    # The worker's: the event's processing, its lag, the purchase's credits, the tasks.
    assert delta("billing_stripe_event_lag_seconds_count") >= 1
    assert delta("billing_credits_granted_total", kind="purchase") == payment.credits
    assert delta("billing_task_duration_seconds_count", task="stripe.process_event",
                 outcome="succeeded") >= 1
    assert value(after, "billing_heartbeat_timestamp_seconds", role="worker") > 0
    # The state, read at scrape time.
    assert value(after, "billing_ledger_integrity_mismatched_accounts") == 0
    assert value(after, "billing_ledger_integrity_last_check_timestamp_seconds") > 0
    assert value(after, "billing_stripe_events_pending") == 0
    assert value(after, "billing_up", dependency="database") == 1
    assert value(after, "billing_up", dependency="broker") == 1
    assert ("billing_log_backlog", frozenset({("stream", "usage")})) in after


def test_failed_and_stuck_events_show_in_the_scrape_and_the_health_api(guarded, db):
    admin = make_user(db, role="admin")
    old = utc_now().replace(year=utc_now().year - 1)
    db.add_all([
        StripeEvent(id="evt_failed_metrics", type="charge.refunded", stripe_created=1, livemode=False,
                    payload={}, status="failed", attempts=8),
        StripeEvent(id="evt_stuck_metrics", type="charge.refunded", stripe_created=1, livemode=False,
                    payload={}, status="pending", received_at=old),
    ])
    db.commit()
    _, samples = scrape(guarded)
    assert value(samples, "billing_stripe_events_failed") == 1
    assert value(samples, "billing_stripe_events_pending") == 1
    window = value(samples, "billing_stripe_event_sweep_window_seconds")
    assert value(samples, "billing_stripe_event_oldest_pending_age_seconds") > window > 0

    health = guarded.get("/api/user-management/admin/health", headers=auth_headers(admin))
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["ok"] is False
    assert body["events"]["failed"] == 1 and body["events"]["pending"] == 1
    codes = {p["code"]: p for p in body["problems"]}
    assert codes["events_failed"]["link"] == "#/webhooks?status=failed"
    assert "events_stuck" in codes
    # Not for users.
    user = make_user(db)
    assert guarded.get("/api/user-management/admin/health",
                       headers=auth_headers(user)).status_code == 403


def test_metrics_refuse_anonymous_scrapes(guarded, client, live_api):
    assert guarded.get("/metrics").status_code == 401
    wrong = guarded.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "metrics_token_required"
    assert TOKEN not in wrong.text
    # Without a token setting: loopback clients only (the test client is not one).
    assert client.get("/metrics").status_code == 403
    assert httpx.get(f"{live_api}/metrics", timeout=10).status_code == 200


def test_no_personal_data_in_any_label(guarded, db):
    user = make_user(db, email="very.personal@example.com", credits=10)
    admin = make_user(db, role="admin", email="ops.personal@example.com")
    guarded.post(SPEND, json={"credits": 1, "description": "d", "endpoint": "/v1/x"},
                 headers=auth_headers(user))
    guarded.get(f"/api/user-management/admin/users/{user.id}", headers=auth_headers(admin))
    guarded.get(f"/no/such/path/{user.id}/very.personal@example.com")
    text, samples = scrape(guarded)
    labels = " ".join(f"{k}={v}" for _, ls in samples for k, v in ls)
    assert "@" not in labels and not UUID.search(labels)
    assert str(user.id) not in text and "personal" not in text
    # Routes are templates; an unknown path is one label, whatever it was.
    assert value(samples, "billing_http_requests_total", method="GET",
                 route="/api/user-management/admin/users/{user_id}", status="2xx") >= 1
    assert value(samples, "billing_http_requests_total", method="GET", route="unmatched",
                 status="4xx") >= 1


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: scripts/test.sh installs Debian's prometheus package"
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests(tmp_path):
    rules = ROOT / "deploy" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run([_promtool(), *args], cwd=rules, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
    # The compose profile's Prometheus configuration, with its in-container paths made local.
    config = (rules / "prometheus.yml").read_text().replace(
        "/etc/prometheus/alerts.yml", str(rules / "alerts.yml")).replace(
        "/prometheus/metrics_token", str(tmp_path / "token"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "prometheus.yml").write_text(config)
    run = subprocess.run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    names = set(re.findall(r"- alert: (\w+)", (rules / "alerts.yml").read_text()))
    assert names >= {"StripeEventsFailed", "StripeEventsStuck", "LedgerIntegrityMismatch",
                     "LogBacklogGrowing", "BeatNotTicking", "WorkerHeartbeatMissing",
                     "HighServerErrorRate", "SpendLatencyHigh"}


def test_grafana_dashboard_uses_only_metrics_we_export():
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "billing.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    source = "".join((ROOT / "services" / "monitoring" / name).read_text()
                     for name in ("metrics.py", "exposition.py"))
    declared = set(re.findall(r'"(billing_\w+)"', source))
    used = {re.sub(r"_(total|bucket|count|sum)$", "", m)
            for e in exprs for m in re.findall(r"\b(billing_\w+)", e)}
    assert used and used <= declared, used - declared


def test_health_page_in_the_dashboard(browser, live_api, db):
    make_user(db, email="ops@example.com", role="admin",
              password_hash=password_hash(ADMIN_PASSWORD))
    db.add(StripeEvent(id="evt_failed_page", type="charge.refunded", stripe_created=1, livemode=False,
                       payload={}, status="failed", attempts=8))
    db.commit()
    from tests.browser import open_page, overflow, screenshot

    for width, scheme in ((1280, "light"), (375, "dark")):
        page, problems = open_page(browser, width=width, height=900, color_scheme=scheme)
        sign_in(page, live_api, "ops@example.com", ADMIN_PASSWORD)
        expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        page.get_by_role("link", name="Health").click()
        expect(page.get_by_role("heading", name="Health", level=1)).to_be_visible()
        card = page.locator(".card", has_text="Failed Stripe events")
        expect(card.locator(".card-value")).to_contain_text("1")
        expect(page.locator(".card", has_text="Last beat tick")).to_be_visible()
        expect(page.locator(".card", has_text="Worker heartbeat")).to_be_visible()
        problems_list = page.get_by_role("list", name="Problems")
        expect(problems_list).to_contain_text("parked as failed")
        assert overflow(page) <= width, f"the health page overflows at {width} px"
        screenshot(page, f"dashboard-health-{width}-{scheme}")
        # The problem's link opens the list that fixes it.
        problems_list.locator("li", has_text="parked as failed").get_by_role(
            "link", name="Open the list").click()
        expect(page.get_by_role("heading", name="Webhook events", level=1)).to_be_visible()
        expect(page.locator("tbody tr", has_text="evt_failed_page")).to_be_visible()
        assert problems.errors == []
        page.context.close()


def test_a_request_id_follows_into_the_tasks_it_enqueues(client, celery_worker, db):
    from celery import signals

    published: dict[str, dict] = {}

    def grab(sender=None, headers=None, **_):
        published[sender] = dict(headers or {})

    signals.after_task_publish.connect(grab, weak=False)
    try:
        user = make_user(db)
        # The webhook hands its task to a background thread (send_soon)...
        payment = make_payment(db, user)
        body = event("payment_intent.succeeded", payment_intent(payment))
        import json

        from tests.stripe_events import WEBHOOK_PATH, signature

        raw = json.dumps(body).encode()
        assert client.post(WEBHOOK_PATH, content=raw, headers={
            "Content-Type": "application/json", "Stripe-Signature": signature(raw),
            "X-Request-ID": "trace-webhook-0001"}).status_code == 200
        task_queue.flush()
        assert published["stripe.process_event"]["request_id"] == "trace-webhook-0001"
        # ...a sign-in link's mail goes after the commit; the worker logs under the same id.
        assert client.post("/api/auth/magic-link", json={"email": user.email},
                           headers={"X-Request-ID": "trace-mail-0002"}).status_code == 202
    finally:
        signals.after_task_publish.disconnect(grab)
    log = ARTIFACTS / "worker.log"
    wait_for(lambda: any("trace-mail-0002" in line and "succeeded" in line
                         for line in log.read_text(errors="replace").splitlines()),
             timeout=20, message="the worker's log line with the request's id")


_OTEL_PROBE = """
import sys
from fastapi.testclient import TestClient
from opentelemetry import trace
from api.app import create_app

app = create_app()
with TestClient(app) as client:
    assert client.get("/api/auth/methods").status_code == 200
    client.get("/healthz")  # not traced (probes and scrapes are left out)
trace.get_tracer_provider().force_flush()
"""


def test_with_an_otel_endpoint_the_api_exports_its_spans(tmp_path):
    import http.server
    import os
    import sys
    import threading

    received: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "BILLING_OTEL_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        run = subprocess.run([sys.executable, "-c", _OTEL_PROBE], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        server.shutdown()
    assert received and all(path == "/v1/traces" for path, _ in received)
    spans = b"".join(body for _, body in received)
    assert b"/api/auth/methods" in spans and b"billing-api" in spans
    assert b"/healthz" not in spans


def test_a_short_metrics_token_is_refused_outside_development(monkeypatch):
    from settings import SettingsError, load_settings

    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    for key, value in {"BILLING_ENVIRONMENT": "production", "BILLING_JWT_SECRET": "p" * 40,
                       "BILLING_STRIPE_SECRET_KEY": "sk_live_abcdef",
                       "BILLING_STRIPE_WEBHOOK_SECRET": "whsec_a"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BILLING_METRICS_TOKEN", "short")
    with pytest.raises(SettingsError, match="BILLING_METRICS_TOKEN"):
        load_settings()
    monkeypatch.setenv("BILLING_METRICS_TOKEN", "t" * 32)
    assert load_settings().metrics_token is not None
