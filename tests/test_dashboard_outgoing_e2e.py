"""The dashboard's Outgoing webhooks pages in a real browser: endpoints and why one is
disabled, an endpoint's failed deliveries, and a redelivery from the page."""

from __future__ import annotations

from playwright.sync_api import expect
from sqlalchemy import func, select

from db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.browser import open_page, screenshot
from tests.test_dashboard_e2e import data, sign_in_admin  # noqa: F401 - a fixture


def test_endpoints_failed_deliveries_and_redelivery_from_the_dashboard(
        browser, live_api, data, db):  # noqa: F811
    live = WebhookEndpoint(url="https://hooks.example.com/billing", events=["*"],
                           secret="whsec_dashboard_test_secret")
    gone = WebhookEndpoint(url="https://old.example.com/hook", events=["credits.low"],
                           secret="whsec_dashboard_test_other", enabled=False,
                           disabled_reason="the receiver answered 410 Gone")
    db.add_all([live, gone])
    db.flush()
    db.add(WebhookEvent(id="evt_dashboard_1", type="payment.succeeded",
                        payload={"id": "evt_dashboard_1", "type": "payment.succeeded"}))
    db.flush()
    db.add(WebhookDelivery(endpoint_id=live.id, event_id="evt_dashboard_1", status="failed",
                           attempts=12, last_status_code=500, last_error="HTTP 500"))
    db.commit()
    page, problems = open_page(browser)
    sign_in_admin(page, live_api)
    page.get_by_role("link", name="Outgoing webhooks").click()
    expect(page.get_by_role("heading", name="Outgoing webhooks", level=1)).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.get_by_text("the receiver answered 410 Gone")).to_be_visible()
    page.get_by_role("link", name="https://hooks.example.com/billing").click()
    page.get_by_label("Status").select_option("failed")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("HTTP 500")
    screenshot(page, "dashboard-outgoing-deliveries")
    page.get_by_role("button", name="Redeliver event evt_dashboard_1").click()
    page.get_by_label("Status").select_option("")
    expect(page.locator("tbody tr")).to_have_count(2)
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(WebhookDelivery).where(
        WebhookDelivery.event_id == "evt_dashboard_1")) == 2
    assert problems.errors == []
