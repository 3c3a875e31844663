"""The portal's credits panel shows the grants that hold the balance, with their expiry, and
redeems a promo code, in headless Chromium (375 px dark and desktop light)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from pydantic import AnyHttpUrl

from db.base import utc_now
from services.credits import ledger, promo_codes
from tests.browser import luminance, open_page, overflow, screenshot
from tests.factories import make_user
from tests.support import free_port, served
from tests.test_portal_e2e import PASSWORD, heading, password_hash, sign_in_with_password


@pytest.fixture(scope="module")
def portal(settings) -> Iterator[str]:
    from api.app import create_app

    port = free_port()
    app = create_app(settings.model_copy(update={
        "public_base_url": AnyHttpUrl(f"http://127.0.0.1:{port}")}))
    with served(app, port=port) as url:
        yield url


@pytest.mark.parametrize(("variant", "width", "scheme"),
                         [("desktop", 1280, "light"), ("375-dark", 375, "dark")])
def test_credits_panel_lists_grants_with_expiry_and_redeems_a_promo_code(
    browser, portal, db, variant, width, scheme
):
    email = f"grace-{variant}@example.com"
    user = make_user(db, email=email, password_hash=password_hash(PASSWORD))
    admin = make_user(db, role="admin")
    ledger.post(db, user_id=user.id, amount=120, kind="purchase")
    ledger.post(db, user_id=user.id, amount=30, kind="promo",
                expires_at=utc_now() + timedelta(days=3))
    promo_codes.create(db, admin_id=admin.id, code="WELCOME-25", credits=25)
    db.commit()

    page, problems = open_page(browser, width=width, height=900, color_scheme=scheme)
    page.goto(f"{portal}/account/")
    sign_in_with_password(page, email)
    expect(heading(page, "Credits")).to_be_visible()
    rows = page.locator("#grants tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Promo code")
    expect(rows.nth(0)).to_contain_text("30")
    expect(rows.nth(0).locator("time")).to_have_count(1)  # its expiry, in local time
    expect(rows.nth(1)).to_contain_text("Purchase")
    expect(rows.nth(1)).to_contain_text("Never")

    page.get_by_role("textbox", name="Promo code").fill("welcome-25")
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator("#redeem-status")).to_contain_text(
        "25 credits were added. Your balance is 175 credits.")
    expect(page.locator("#balance")).to_have_text("175")
    expect(rows).to_have_count(3)

    page.get_by_role("textbox", name="Promo code").fill("welcome-25")
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator("#redeem-status")).to_contain_text("already redeemed")

    assert overflow(page) <= width
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert (luminance(background) < 0.05) == (scheme == "dark")
    screenshot(page, f"portal-grants-{variant}")
    assert ledger.balance(db, user.id) == 175
    assert problems.errors == []
