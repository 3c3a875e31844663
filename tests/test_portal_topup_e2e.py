"""The portal's Auto top-up panel in a real browser: alerts saved, refusals explained,
a saved card and the top-up history shown, at 375 px in the dark scheme."""

from __future__ import annotations

from playwright.sync_api import expect

from db.models import SavedPaymentMethod, TopupAttempt
from tests.browser import open_page, overflow, screenshot
from tests.factories import make_user
from tests.test_portal_e2e import (  # noqa: F401 - fixtures among them
    PASSWORD,
    _webhooks_to_the_portal,
    heading,
    password_hash,
    portal,
    sign_in_with_password,
    user_by_email,
)


def test_auto_topup_panel_saves_the_alert_explains_refusals_and_lists_cards_and_topups(
        browser, portal, db):  # noqa: F811
    user = make_user(db, email="tia@example.com", password_hash=password_hash(PASSWORD))
    db.add(SavedPaymentMethod(id="pm_test_portal_visa", user_id=user.id, type="card",
                              brand="visa", last4="4242", exp_month=12, exp_year=2030))
    db.add(TopupAttempt(user_id=user.id, sequence=1, package_id="starter", status="failed",
                        failure_code="card_declined", failure_message="the card was declined",
                        balance_at_start=3))
    db.commit()
    page, problems = open_page(browser, width=375, color_scheme="dark")
    page.goto(f"{portal}/account/")
    sign_in_with_password(page, "tia@example.com")
    page.get_by_role("link", name="Auto top-up").click()
    expect(heading(page, "Auto top-up")).to_be_visible()
    expect(page.locator("#payment-methods")).to_contain_text("4242")
    expect(page.get_by_role("table")).to_contain_text("the card was declined")

    page.get_by_label("Mail me when the balance falls below").fill("50")
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator("#alerts-form-status")).to_contain_text("below 50 credits")
    assert user_by_email(db, "tia@example.com").low_balance_alert == 50

    page.get_by_label("Top up automatically").check()
    page.locator("#topup-threshold").fill("500")
    page.get_by_role("button", name="Save auto top-up").click()
    expect(page.locator("#auto-topup-form-status")).to_contain_text(
        "must not be above the credits")
    page.locator("#topup-threshold").fill("20")
    page.get_by_role("button", name="Save auto top-up").click()
    expect(page.locator("#auto-topup-form-status")).to_have_text("Automatic top-up is on.")
    assert user_by_email(db, "tia@example.com").auto_topup_below == 20
    assert overflow(page) <= 375
    screenshot(page, "portal-topup-375-dark")
    assert problems.errors == []
