"""The admin dashboard at /admin, driven in headless Chromium against the live API.

Driven as tests/browser.py says; screenshots go to test-artifacts/dashboard-*.png.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from functools import cache

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from db.base import utc_now
from db.models import AdminActivityLog, AdminStatsSnapshot, StripeEvent, User
from services.auth.passwords import hash_password
from services.credits import ledger
from services.logs import logstream, writer
from services.stats import reports
from services.stats import snapshot as stats
from tests.browser import (
    contrast,
    luminance,
    open_page,
    overflow,
    screenshot,
    tab_to,
)
from tests.factories import make_payment, make_user

ADMIN_PASSWORD = "Correct horse battery staple 9"  # noqa: S105 (a test account's password)
USER_PASSWORD = "Another long passphrase 77"  # noqa: S105


@cache
def password_hash(password: str) -> str:
    """Hashed once per run: argon2 is slow on purpose."""
    return hash_password(password)


def shot(page: Page, name: str) -> None:
    screenshot(page, f"dashboard-{name}")


@pytest.fixture
def data(db):
    """An admin and two users with passwords, a payment, and a stats snapshot of it all."""
    admin = make_user(db, email="ops@example.com", role="admin", full_name="Olga Ops",
                      password_hash=password_hash(ADMIN_PASSWORD))
    alice = make_user(db, email="alice@example.com", full_name="Alice Liddell", credits=100,
                      password_hash=password_hash(USER_PASSWORD))
    bob = make_user(db, email="bob@example.com", full_name="Bob <script>alert(1)</script>",
                    password_hash=password_hash(USER_PASSWORD))
    payment = make_payment(db, alice)
    payment.status = "succeeded"
    payment.succeeded_at = utc_now() - timedelta(days=2)
    ledger.post(db, user_id=alice.id, amount=payment.credits, kind="purchase",
                reference_type="payment", reference_id=str(payment.id),
                dedupe_key=f"payment:{payment.id}")
    db.commit()
    stats.take_snapshot(db)
    db.commit()
    return {"admin": admin, "alice": alice, "bob": bob, "payment": payment}


def sign_in(page: Page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/admin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def sign_in_admin(page: Page, base: str) -> None:
    sign_in(page, base, "ops@example.com", ADMIN_PASSWORD)
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()


def test_admin_signs_in_sees_stats_and_adjusts_a_users_credits(browser, live_api, data, db):
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)

    # The latest snapshot: three users, the payment's revenue, the time it was computed.
    cards = page.locator(".cards")
    expect(cards.locator(".card", has_text="Total users")).to_contain_text("3")
    revenue = data["payment"].amount_cents / 100
    expect(cards.locator(".card", has_text="Revenue, all time")).to_contain_text(f"{revenue:.2f}")
    expect(page.locator("#computed-at time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    expect(page.locator("svg.chart rect.bar")).to_have_count(30)
    assert "token" not in page.url and "ey" not in page.url.split("#")[0]
    shot(page, "overview-desktop")

    # Search finds alice and only her.
    page.get_by_role("link", name="Users").click()
    page.get_by_label("Search users").fill("alice")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#users-results tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("alice@example.com")
    expect(rows.first).to_contain_text(str(100 + data["payment"].credits))
    rows.first.get_by_role("link", name="alice@example.com").click()

    balance_before = 100 + data["payment"].credits
    expect(page.get_by_role("heading", name="alice@example.com", level=1)).to_be_visible()
    expect(page.locator("#user-balance")).to_have_text(str(balance_before))

    # The reason is required: nothing is sent without one.
    page.get_by_label("Amount (credits)").fill("250")
    page.get_by_role("button", name="Review adjustment").click()
    expect(page.locator("#adjust-error")).to_contain_text("reason")
    expect(page.locator("#adjust-review")).to_be_hidden()

    # Review, then confirm; the new balance and the audit entry show on the page.
    page.get_by_label("Reason (required)").fill("Goodwill for incident 42")
    page.get_by_role("button", name="Review adjustment").click()
    review = page.locator("#adjust-review")
    expect(review).to_contain_text(f"{balance_before} → {balance_before + 250}")
    expect(review).to_contain_text("Goodwill for incident 42")
    page.get_by_role("button", name="Confirm: +250 credits").click()
    expect(page.locator("#adjust-new-balance")).to_have_text(str(balance_before + 250))
    expect(page.locator("#user-balance")).to_have_text(str(balance_before + 250))
    audit = page.locator("#user-audit tbody tr").first
    expect(audit).to_contain_text("credits.adjust")
    expect(audit).to_contain_text("Goodwill for incident 42")
    expect(page.locator("#user-transactions tbody tr").first).to_contain_text("+250")
    shot(page, "user-desktop")

    # The server agrees: balance changed once, audited with the reason and the admin.
    db.expire_all()
    assert db.get(User, data["alice"].id).credit_balance == balance_before + 250
    entries = db.scalars(select(AdminActivityLog).where(
        AdminActivityLog.target_user_id == data["alice"].id)).all()
    assert [(e.action, e.reason, e.admin_id) for e in entries] == [
        ("credits.adjust", "Goodwill for incident 42", data["admin"].id)]

    # And the audit log page lists it.
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("tbody tr").first).to_contain_text("Goodwill for incident 42")
    shot(page, "audit-desktop")
    assert problems.errors == []


def test_server_data_is_shown_as_text_never_as_markup(browser, live_api, data):
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)
    page.goto(f"{live_api}/admin/#/users")
    row = page.locator("#users-results tbody tr", has_text="bob@example.com")
    expect(row).to_contain_text("Bob <script>alert(1)</script>")
    assert page.locator("#users-results script").count() == 0
    assert problems.errors == []


def test_non_admin_is_refused(browser, live_api, data):
    page, problems = open_page(browser)
    sign_in(page, live_api, "bob@example.com", USER_PASSWORD)
    refusal = page.locator("#signin-message")
    expect(refusal).to_contain_text("not an administrator")
    expect(refusal).to_have_class(re.compile("refusal"))
    expect(page.locator("#nav")).to_be_hidden()
    expect(page.locator("#view")).to_be_hidden()
    # The tokens were dropped (and revoked): nothing of bob's session stays in the tab.
    assert page.evaluate("() => window.sessionStorage.length") == 0
    page.goto(f"{live_api}/admin/#/users")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "refused")
    assert problems.errors == []


def test_sign_in_works_from_the_keyboard_and_says_when_the_password_is_wrong(
    browser, live_api, data
):
    page, problems = open_page(browser)
    page.goto(f"{live_api}/admin/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    tab_to(page, "signin-email")
    # Focus is visible: the focused field draws an outline.
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), outline
    page.keyboard.type("ops@example.com")
    page.keyboard.press("Tab")
    page.keyboard.type("not the password at all")
    page.keyboard.press("Enter")
    expect(page.locator("#signin-message")).to_contain_text("email or password is wrong")
    expect(page.locator("#nav")).to_be_hidden()

    page.locator("#signin-password").fill("")
    page.locator("#signin-password").focus()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    heading = page.get_by_role("heading", name="Overview", level=1)
    expect(heading).to_be_visible()
    # Keyboard users land on the page they opened, then reach the sections by Tab.
    expect(heading).to_be_focused()
    page.get_by_role("link", name="Users").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Users", level=1)).to_be_focused()
    assert problems.errors == []


def test_layout_holds_at_375_px(browser, live_api, data):
    page, problems = open_page(browser, width=375, height=812)
    page.goto(f"{live_api}/admin/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert overflow(page) <= 375
    shot(page, "signin-375")
    sign_in_admin(page, live_api)
    expect(page.locator("svg.chart")).to_be_visible()
    assert overflow(page) <= 375, "overview overflows at 375 px"
    shot(page, "overview-375")
    for section, heading in [("users", "Users"), ("payments", "Payments"),
                             ("webhooks", "Webhook events"), ("reports", "Reports"),
                             ("audit", "Audit log")]:
        page.goto(f"{live_api}/admin/#/{section}")
        expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        expect(page.locator("[aria-busy]")).to_have_count(0)
        assert overflow(page) <= 375, f"{section} overflows at 375 px"
        if section == "users":
            shot(page, "users-375")
    page.goto(f"{live_api}/admin/#/users/{data['alice'].id}")
    expect(page.locator("#user-transactions tbody tr").first).to_be_visible()
    assert overflow(page) <= 375, "the user page overflows at 375 px"
    shot(page, "user-375")
    assert problems.errors == []


def test_dark_mode_follows_the_system_and_the_toggle_persists(browser, live_api, data):
    page, problems = open_page(browser, color_scheme="dark")
    sign_in_admin(page, live_api)
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert luminance(background) < 0.05, background
    # Text keeps WCAG AA contrast (4.5:1) in the dark theme too.
    assert contrast(page, "h1", "body") >= 4.5
    assert contrast(page, ".card-extra", ".card") >= 4.5
    assert contrast(page, "#nav a", ".topbar") >= 4.5
    toggle = page.get_by_role("button", name="Dark mode")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    shot(page, "overview-dark")
    page.goto(f"{live_api}/admin/#/users/{data['alice'].id}")
    expect(page.locator("#user-transactions tbody tr").first).to_be_visible()
    shot(page, "user-dark")

    # The toggle overrides the system and is remembered across a reload.
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    assert page.evaluate("() => localStorage.getItem('billing-theme')") == "light"
    page.reload()
    expect(page.locator("#user-balance")).to_be_visible()
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert luminance(background) > 0.8, background
    assert contrast(page, ".details dt", ".panel") >= 4.5
    # Choosing the system's theme again goes back to following the system.
    page.get_by_role("button", name="Dark mode").click()
    assert page.evaluate("() => localStorage.getItem('billing-theme')") is None
    assert problems.errors == []


def test_failed_webhook_event_is_retried_from_the_page(browser, live_api, data, db):
    # A type the pipeline does not handle: once retried, a worker marks it ignored, so it
    # leaves the failed list whether or not the session's worker takes it at once.
    db.add(StripeEvent(id="evt_test_dashboard_failed", type="customer.created",
                       livemode=False, stripe_created=1_700_000_000,
                       payload={"id": "evt_test_dashboard_failed", "type": "customer.created",
                                "data": {"object": {"id": "cus_x", "object": "customer"}}},
                       status="failed", attempts=8, last_error="payment not found"))
    db.add(StripeEvent(id="evt_test_dashboard_done", type="charge.refunded", livemode=False,
                       stripe_created=1_700_000_000, payload={"id": "y"}, status="processed",
                       attempts=1))
    db.commit()
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)
    page.get_by_role("link", name="Webhook events").click()
    # Failed events are what the page shows first.
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("payment not found")
    shot(page, "webhooks-desktop")
    page.get_by_role("button", name="Retry event evt_test_dashboard_failed").click()
    expect(page.get_by_text("No events match.")).to_be_visible()

    db.expire_all()
    event = db.get(StripeEvent, "evt_test_dashboard_failed")
    assert event.status in {"pending", "ignored"}, event.status
    assert db.scalar(select(AdminActivityLog.action).where(
        AdminActivityLog.admin_id == data["admin"].id)) == "stripe_event.retry"
    assert problems.errors == []


def test_report_downloads_as_csv(browser, live_api, data, db):
    report, _ = reports.produce(db, (utc_now() - timedelta(days=1)).date())
    db.commit()
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)
    page.get_by_role("link", name="Reports").click()
    with page.expect_download() as download:
        page.get_by_role("button", name=f"Download the report of {report.day} as CSV").click()
    assert download.value.suggested_filename == f"report-{report.day}.csv"
    text = open(download.value.path(), encoding="utf-8").read()
    assert text.splitlines()[0] == "section,key,value"
    assert f"day,day,{report.day}" in text
    assert problems.errors == []


def test_overview_follows_new_snapshots_on_the_stats_interval(browser, live_api, data, db):
    page, problems = open_page(browser)
    page.clock.install()
    sign_in_admin(page, live_api)
    expect(page.locator(".card", has_text="Total users")).to_contain_text("3")
    make_user(db, email="carol@example.com")
    db.add(AdminStatsSnapshot(computed_at=utc_now(), data=stats.compute(db), duration_ms=1.0))
    db.commit()
    interval = page.evaluate("async () => (await (await fetch('config.json')).json())"
                             ".stats_interval_s")
    page.clock.run_for(interval * 1000 + 1000)
    expect(page.locator(".card", has_text="Total users")).to_contain_text("4")
    assert problems.errors == []


def test_refresh_button_recomputes_the_stats(browser, live_api, data, db, celery_worker):
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)
    before = page.locator("#computed-at time").get_attribute("datetime")
    make_user(db, email="dave@example.com")
    page.get_by_role("button", name="Refresh now").click()
    expect(page.get_by_role("status").filter(has_text="Statistics updated.")).to_be_visible(
        timeout=40_000)
    expect(page.locator(".card", has_text="Total users")).to_contain_text("4")
    assert page.locator("#computed-at time").get_attribute("datetime") != before
    assert db.scalar(select(AdminStatsSnapshot).order_by(
        AdminStatsSnapshot.computed_at.desc())).data["users"]["total"] == 4
    assert problems.errors == []


def test_overview_shows_retention_peak_hours_plan_changes_and_ltv(browser, live_api, data, db):
    now = utc_now()
    record = logstream.UsageRecord(id=uuid.uuid4(), created_at=now, user_id=data["alice"].id,
                                   endpoint="/v1/x", credits=3, status_code=200)
    writer.write_usage(db, [record])
    stats.take_snapshot(db)
    db.commit()
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)

    retention = page.locator("section[aria-labelledby='retention-title']")
    # This week's cohort: the three accounts of the data set, alice used credits: 33%.
    expect(retention.locator(".heat-table tbody tr").last).to_contain_text("33%")
    expect(retention.locator("td.heat")).to_have_count(sum(range(1, 13)))
    peak = page.locator("section[aria-labelledby='peak-title']")
    expect(peak.locator("td.heat")).to_have_count(7 * 24)
    hottest = peak.locator("td.heat-5")
    expect(hottest).to_have_count(1)
    weekday = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][now.weekday()]
    expect(hottest).to_have_attribute("title", re.compile(rf"^{weekday} {now.hour:02d}:00 UTC: 1 "))
    peak.get_by_text("Show the figures as a table").click()
    expect(peak.locator("details tbody tr")).to_have_count(1)
    changes = page.locator("section[aria-labelledby='changes-title']")
    expect(changes.locator("svg rect")).to_have_count(24)
    expect(changes.locator("details tbody tr")).to_have_count(12)
    value = page.locator("section[aria-labelledby='ltv-title']")
    expect(value).to_contain_text("per paying user")
    expect(value.locator("tbody tr", has_text="No subscription")).to_contain_text("3")
    expect(page.locator(".card", has_text="API calls")).to_contain_text("1")
    shot(page, "overview-figures")
    assert problems.errors == []
