"""The customer portal at /account and the pages links open, in headless Chromium.

The API is served as `billing dev` serves it against the local Stripe peer (test cards, no
Checkout): purchases are PaymentIntents confirmed on the test stack's localstripe, whose
signed webhooks reach this server and the session's Celery worker, which grants the
credits. Mail goes to the loopback SMTP server, texts to files, Google to the loopback
OpenID provider. Screenshots: test-artifacts/portal-*.png.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

import httpx
import pytest
from playwright.sync_api import Page, expect
from pydantic import AnyHttpUrl
from sqlalchemy import select

from api.middleware import PAGES_CSP
from db.models import CreditTransaction, StripeEvent, User
from services.auth.passwords import hash_password
from tests.browser import luminance, open_page, overflow, screenshot, tab_to
from tests.conftest_auth import google_settings
from tests.factories import make_user
from tests.smtp import link_in
from tests.stripe_events import WEBHOOK_PATH, point_localstripe_webhooks
from tests.support import free_port, served, wait_for

PASSWORD = "Correct horse battery staple 9"  # noqa: S105 (a test account's password)
API = "/api/user-management"
# Credits come through localstripe's webhook (sent ~1 s after the payment) and a worker.
CREDITS_WAIT_MS = 40_000
LINK_PAGES = ["/auth/confirm", "/auth/magic-link", "/auth/undo-email-change", "/auth/google",
              "/billing/success", "/billing/cancel"]


@cache
def password_hash(password: str) -> str:
    """Hashed once per run: argon2 is slow on purpose."""
    return hash_password(password)


@pytest.fixture(scope="module")
def portal(settings, _oidc_server) -> Iterator[str]:
    """The API on a port of its own, its links pointing at itself, on the local Stripe peer."""
    from api.app import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(settings.model_copy(update={
        "stripe_local_peer": True, "public_base_url": AnyHttpUrl(base),
        **google_settings(_oidc_server)}))
    with served(app, port=port) as url:
        yield url


@pytest.fixture(autouse=True)
def _webhooks_to_the_portal(portal, localstripe_url) -> None:
    point_localstripe_webhooks(localstripe_url, portal + WEBHOOK_PATH)


def heading(page: Page, name: str):
    return page.get_by_role("heading", name=name, level=1)


def sign_in_with_password(page: Page, email: str) -> None:
    page.locator("#signin-email").fill(email)
    page.locator("#signin-password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(heading(page, "Credits")).to_be_visible()


def signed_in_page(browser, portal: str, db, email: str) -> tuple[Page, object]:
    """A page of a confirmed account with a password, signed in on its Credits page."""
    make_user(db, email=email, password_hash=password_hash(PASSWORD))
    page, problems = open_page(browser)
    page.goto(f"{portal}/account/")
    sign_in_with_password(page, email)
    return page, problems


def access_token(page: Page) -> str:
    """The signed-in tab's access token (kept in its session storage)."""
    return page.evaluate(
        "() => JSON.parse(sessionStorage.getItem('billing-account-session')).access")


def user_by_email(db, address: str) -> User:
    db.expire_all()
    return db.scalars(select(User).where(User.email == address)).one()


# --- the main journey ---------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "width", "scheme"),
                         [("desktop", 1280, "light"), ("375-dark", 375, "dark")])
def test_new_user_signs_up_confirms_buys_the_starter_package_spends_and_sees_it(
    browser, portal, mailbox, db, celery_worker, variant, width, scheme
):
    page, problems = open_page(browser, width=width, height=860, color_scheme=scheme)
    email = f"ada-{variant}@example.com"

    def check(name: str) -> None:
        assert overflow(page) <= width, f"{name} overflows at {width} px"
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert (luminance(background) < 0.05) == (scheme == "dark"), (name, background)
        screenshot(page, f"portal-{variant}-{name}")

    # Sign up.
    page.goto(f"{portal}/account/")
    expect(heading(page, "Sign in")).to_be_visible()
    check("sign-in")
    page.get_by_role("button", name="Create an account").click()
    expect(heading(page, "Create an account")).to_be_focused()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Name (optional)").fill("Ada Lovelace")
    check("sign-up")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#signin")).to_contain_text(f"we mailed a confirmation link to {email}")

    # The link in the mail confirms the address, and is gone from the address bar.
    link = link_in(mailbox.wait_for(email))
    assert link.startswith(f"{portal}/auth/confirm?token=")
    page.goto(link)
    expect(heading(page, "Email confirmed")).to_be_visible()
    expect(page.locator("#outcome")).to_contain_text(f"{email} is confirmed")
    assert "token" not in page.url
    check("confirmed")
    page.get_by_role("link", name="Sign in").click()
    expect(heading(page, "Sign in")).to_be_visible()
    sign_in_with_password(page, email)
    expect(page.locator("#balance")).to_have_text("0")

    # Buy the starter package with the test Visa card.
    page.get_by_role("button", name="Buy Starter: 100 credits for $15.00").click()
    expect(page.locator("#test-card-form")).to_be_visible()
    check("pay")
    page.get_by_role("button", name="Pay $15.00").click()
    expect(heading(page, "Payment received")).to_be_visible(timeout=CREDITS_WAIT_MS)
    expect(page.locator("#outcome")).to_contain_text(
        "100 credits were added. Your balance is 100 credits.")
    check("paid")
    page.get_by_role("link", name="Back to your account").click()
    expect(page.locator("#balance")).to_have_text("100")
    expect(page.locator("#purchased")).to_have_text("100")

    # They came through Stripe's webhook and a worker: the event is stored and processed.
    user = user_by_email(db, email)
    event = db.scalars(select(StripeEvent).where(
        StripeEvent.type == "payment_intent.succeeded",
        StripeEvent.payload["data"]["object"]["metadata"]["user_id"].astext == str(user.id),
    )).one()
    assert event.status == "processed"

    # Spend through the API, as the customer's own program would.
    spent = httpx.post(f"{portal}{API}/credits/use",
                       json={"credits": 7, "description": "Summarise a report",
                             "endpoint": "/v1/summarise"},
                       headers={"Authorization": f"Bearer {access_token(page)}"}, timeout=10)
    assert spent.status_code == 200 and spent.json()["balance"] == 93

    # The portal shows the spend, the purchase and its receipt.
    page.get_by_role("link", name="Activity").click()
    expect(heading(page, "Activity")).to_be_visible()
    rows = page.locator("#transactions tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Summarise a report")
    expect(rows.nth(0)).to_contain_text("-7")
    expect(rows.nth(0)).to_contain_text("93")
    expect(rows.nth(1)).to_contain_text("+100")
    payment = page.locator("#payments tbody tr")
    expect(payment).to_have_count(1)
    expect(payment).to_contain_text("succeeded")
    check("activity")
    payment.get_by_role("link", name=re.compile("^Receipt")).click()
    expect(heading(page, "Receipt")).to_be_visible()
    receipt = page.locator(".receipt")
    expect(receipt).to_contain_text("Starter package: 100 credits")
    expect(receipt).to_contain_text("VISA •••• 4242")
    expect(receipt).to_contain_text("Ada Lovelace")
    expect(page.locator("#receipt-amount")).to_have_text("$15.00")
    check("receipt")
    page.get_by_role("link", name="Credits").click()
    expect(page.locator("#balance")).to_have_text("93")
    expect(page.locator("#used")).to_have_text("7")
    check("credits")

    db.expire_all()
    assert db.get(User, user.id).credit_balance == 93
    kinds = db.scalars(select(CreditTransaction.kind).where(
        CreditTransaction.user_id == user.id).order_by(CreditTransaction.id)).all()
    assert kinds == ["purchase", "usage"]
    assert problems.errors == []


# --- every other way in --------------------------------------------------------------------------


def test_magic_link_signs_in_from_the_mail(browser, portal, mailbox, db, celery_worker):
    make_user(db, email="grace@example.com")
    page, problems = open_page(browser)
    page.goto(f"{portal}/account/")
    page.get_by_label("Email link").check()
    page.locator("#magic-email").fill("grace@example.com")
    page.get_by_role("button", name="Email me a link").click()
    expect(page.locator("#magic-link-form")).to_contain_text("a sign-in link is on its way")
    link = link_in(mailbox.wait_for("grace@example.com"))
    assert link.startswith(f"{portal}/auth/magic-link?token=")
    page.goto(link)
    expect(heading(page, "Credits")).to_be_visible()
    assert page.url == f"{portal}/account/#/credits"
    expect(page.locator("#whoami")).to_have_text("grace@example.com")

    # The link worked once; opened again it says so.
    page.goto(link)
    expect(heading(page, "This sign-in link did not work")).to_be_visible()
    expect(page.locator("#outcome")).to_contain_text("used already")
    screenshot(page, "portal-link-magic-used")
    assert problems.errors == []


def test_phone_code_signs_in_and_makes_the_account(browser, portal, sms_box, db, celery_worker):
    page, problems = open_page(browser, width=375, height=800)
    page.goto(f"{portal}/account/")
    page.get_by_label("Phone code").check()
    page.locator("#phone-number").fill("+14155550123")
    page.get_by_role("button", name="Text me a code").click()
    expect(page.locator("#phone-code")).to_be_focused()
    code = sms_box.code_for("+14155550123")
    page.locator("#phone-code").fill("000000" if code != "000000" else "111111")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#phone-form")).to_contain_text("The code is wrong")
    page.locator("#phone-code").fill(code)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(heading(page, "Credits")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("+14155550123")
    assert overflow(page) <= 375
    db.expire_all()
    assert db.scalars(select(User.phone)).all() == ["+14155550123"]
    assert problems.errors == []


def test_google_signs_in_through_the_auth_google_page(browser, portal, oidc, db, celery_worker):
    page, problems = open_page(browser)
    page.goto(f"{portal}/account/")
    page.get_by_role("link", name="Continue with Google").click()
    # The provider sends the browser to /auth/google, whose script finishes the sign-in.
    expect(heading(page, "Credits")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("ada@example.com")
    assert "code=" not in page.url and "state=" not in page.url
    db.expire_all()
    assert db.scalars(select(User.email)).all() == ["ada@example.com"]
    assert problems.errors == []


# --- profile, subscription ----------------------------------------------------------------------


def test_email_change_is_confirmed_from_the_new_address_and_undone_from_the_old(
    browser, portal, mailbox, db, celery_worker
):
    page, problems = signed_in_page(browser, portal, db, "old@example.com")
    page.get_by_role("link", name="Profile").click()
    expect(heading(page, "Profile")).to_be_visible()

    page.get_by_label("New email").fill("new@example.com")
    page.get_by_role("button", name="Change email").click()
    expect(page.locator("#email-form-status")).to_contain_text("Enter your current password to change it")
    page.get_by_label("Current password").fill("not the password at all")
    page.get_by_role("button", name="Change email").click()
    expect(page.locator("#email-form-status")).to_contain_text("current password is wrong")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_role("button", name="Change email").click()
    expect(page.locator("#email-form-status")).to_contain_text("Check new@example.com")
    screenshot(page, "portal-profile")

    page.goto(link_in(mailbox.wait_for("new@example.com")))
    expect(heading(page, "Email confirmed")).to_be_visible()
    expect(page.locator("#outcome")).to_contain_text("new@example.com is confirmed")
    page.get_by_role("link", name="Back to your account").click()
    page.get_by_role("link", name="Profile").click()
    expect(page.locator("#current-email")).to_contain_text("new@example.com (confirmed)")

    # The old address got a note with an undo link; its page asks before it acts.
    undo = link_in(mailbox.wait_for("old@example.com"))
    assert undo.startswith(f"{portal}/auth/undo-email-change?token=")
    other, _ = open_page(browser)
    other.goto(undo)
    expect(heading(other, "Undo the email change?")).to_be_visible()
    assert user_by_email(db, "new@example.com")  # nothing done on opening
    screenshot(other, "portal-link-undo")
    other.get_by_role("button", name="Undo the change").click()
    expect(heading(other, "Your address is back")).to_be_visible()
    other.get_by_role("button", name="Mail a sign-in link to old@example.com").click()
    expect(other.locator("#send-link-form")).to_contain_text("on its way to old@example.com")
    magic = link_in(mailbox.wait_for("old@example.com", count=2))
    assert magic.startswith(f"{portal}/auth/magic-link?token=")
    assert user_by_email(db, "old@example.com").password_hash is None

    # The tab that made the change was signed out by the undo.
    page.get_by_role("link", name="Credits").click()
    expect(heading(page, "Sign in")).to_be_visible()
    assert problems.errors == []


def test_phone_change_waits_for_its_code_and_sign_out_everywhere_ends_the_sessions(
    browser, portal, sms_box, db, celery_worker
):
    page, problems = signed_in_page(browser, portal, db, "lin@example.com")
    token = access_token(page)
    page.get_by_role("link", name="Profile").click()
    page.get_by_label("New phone number").fill("+14155550199")
    page.get_by_role("button", name="Change number").click()
    expect(page.locator("#phone-form-status")).to_contain_text("A code is on its way")
    expect(page.locator("#phone-verify-code")).to_be_focused()
    expect(page.locator("#current-phone")).to_contain_text("No phone number")
    page.locator("#phone-verify-code").fill(sms_box.code_for("+14155550199"))
    page.get_by_role("button", name="Confirm number").click()
    expect(page.locator("#current-phone")).to_contain_text("+14155550199 (confirmed)")

    page.get_by_role("button", name="Sign out everywhere").click()
    expect(heading(page, "Sign in")).to_be_visible()
    expect(page.locator("#signin")).to_contain_text("signed out on every device")
    answer = httpx.get(f"{portal}{API}/profile", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert problems.errors == []


def test_subscription_starts_with_the_test_card_and_cancels_at_period_end(
    browser, portal, db, celery_worker, client
):
    from tests.factories import auth_headers

    admin = make_user(db, role="admin")
    assert client.post(f"{API}/admin/plans", json={
        "slug": "team", "name": "Team", "monthly_credits": 1000, "price_cents": 4900},
        headers=auth_headers(admin)).status_code == 201
    page, problems = signed_in_page(browser, portal, db, "sam@example.com")
    page.get_by_role("link", name="Subscription").click()
    page.get_by_role("button", name=re.compile("^Subscribe to Team")).click()
    expect(page.get_by_role("heading", name="Team plan")).to_be_visible()
    expect(page.locator(".details")).to_contain_text("active")
    expect(page.locator(".details")).to_contain_text("Renews")
    page.get_by_role("button", name="Cancel subscription").click()
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(page.locator(".details")).to_contain_text("Ends")
    expect(page.get_by_role("button", name="Cancel subscription")).to_have_count(0)
    screenshot(page, "portal-subscription")
    user = user_by_email(db, "sam@example.com")
    wait_for(lambda: user_by_email(db, "sam@example.com").credit_balance == 1000, timeout=30,
             message="the first invoice's credits")
    page.get_by_role("link", name="Credits").click()
    expect(page.locator("#balance")).to_have_text("1,000")
    assert user.subscription_status == "active"
    assert problems.errors == []


def test_change_plan_upgrades_now_and_a_downgrade_waits_until_kept_back(
    browser, portal, db, client
):
    from db.models import PlanChange
    from tests.factories import auth_headers

    admin = make_user(db, role="admin")
    for slug, credits, price in (("basic", 100, 900), ("team", 1000, 4900)):
        assert client.post(f"{API}/admin/plans", json={
            "slug": slug, "name": slug.title(), "monthly_credits": credits,
            "price_cents": price}, headers=auth_headers(admin)).status_code == 201
    page, problems = signed_in_page(browser, portal, db, "cora@example.com")
    page.get_by_role("link", name="Subscription").click()
    page.get_by_role("button", name=re.compile("^Subscribe to Basic")).click()
    expect(page.get_by_role("heading", name="Basic plan")).to_be_visible()

    expect(page.get_by_label("Change plan")).to_contain_text("Team")  # the one other plan
    page.get_by_role("button", name="Change plan").click()
    expect(page.get_by_role("heading", name="Team plan")).to_be_visible()

    expect(page.get_by_label("Change plan")).to_contain_text("Basic")
    page.get_by_role("button", name="Change plan").click()
    expect(page.locator(".change-plan")).to_contain_text("Moves to Basic on")
    expect(page.get_by_role("heading", name="Team plan")).to_be_visible()  # until period end
    screenshot(page, "portal-change-plan")
    page.get_by_role("button", name="Keep Team").click()
    expect(page.get_by_role("button", name="Keep Team")).to_have_count(0)
    expect(page.locator(".change-plan")).not_to_contain_text("Moves to")

    db.expire_all()
    user = user_by_email(db, "cora@example.com")
    changes = db.scalars(select(PlanChange).where(PlanChange.user_id == user.id)
                         .order_by(PlanChange.created_at)).all()
    assert [(c.direction, c.status) for c in changes] == [
        ("upgrade", "applied"), ("downgrade", "superseded")]
    assert problems.errors == []


# --- the link pages on their own ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "title", "says"), [
    ("/auth/confirm?token=not-a-real-token", "This link did not work", "not valid"),
    ("/auth/magic-link?token=not-a-real-token", "This sign-in link did not work", "not valid"),
    ("/auth/undo-email-change", "Nothing to do here", "link in a mail"),
    ("/auth/google?error=access_denied", "Google sign-in did not work", "Try again"),
    ("/billing/success", "Thank you", "Sign in to see your credits"),
    ("/billing/cancel", "Payment cancelled", "Nothing was charged"),
])
def test_each_link_page_says_how_it_went_and_links_onward(browser, portal, path, title, says):
    page, problems = open_page(browser, width=375, height=700)
    page.goto(f"{portal}{path}")
    expect(heading(page, title)).to_be_visible()
    expect(page.locator("#outcome")).to_contain_text(says)
    expect(page.locator("#outcome a.button").first).to_have_attribute("href", re.compile("^/account/"))
    assert "token" not in page.url
    assert overflow(page) <= 375
    screenshot(page, "portal-link" + path.split("?")[0].replace("/", "-"))
    assert problems.errors == []


def test_sign_in_works_from_the_keyboard(browser, portal, db):
    make_user(db, email="kim@example.com", password_hash=password_hash(PASSWORD))
    page, problems = open_page(browser)
    page.goto(f"{portal}/account/")
    expect(heading(page, "Sign in")).to_be_visible()
    # The methods are one radio group: Tab reaches it, the arrow keys change the method.
    tab_to(page, "method-password")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#magic-link-form")).to_be_visible()
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#password-form")).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.type("kim@example.com")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(heading(page, "Credits")).to_be_focused()
    # The next stop is a Buy button, and the focus on it is visible.
    page.keyboard.press("Tab")
    focused = page.evaluate("() => [document.activeElement.textContent,"
                            " getComputedStyle(document.activeElement).outlineStyle]")
    assert focused[0] == "Buy" and focused[1] not in ("", "none"), focused
    page.keyboard.press("Enter")
    expect(page.locator("#test-card-form")).to_be_visible()
    expect(page.locator("#card-visa")).to_be_focused()
    assert problems.errors == []


def test_the_pages_answer_the_security_headers_and_their_csp(client):
    paths = ["/account/", "/account/app.js", "/account/panels/credits.js", "/account/portal.css",
             "/account/config.json", "/ui/base.css", "/ui/api.js", *LINK_PAGES]
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-security-policy"] == PAGES_CSP, path
        assert "'unsafe-inline'" not in answer.headers["content-security-policy"]
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert client.get("/account/").headers["content-type"].startswith("text/html")
    assert client.get("/account/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/account", follow_redirects=False).headers["location"] == "/account/"
    for path in ["/account/../settings.py", "/account/nope.js", "/ui/%2e%2e/app.py",
                 "/account/panels/../../routes/portal.py"]:
        refused = client.get(path)
        assert refused.status_code == 404, path
        assert refused.json()["error"]["code"] == "not_found"


# --- holds and API keys -------------------------------------------------------------------------


def test_credits_show_held_and_available_and_api_keys_are_made_shown_once_and_revoked(
    browser, portal, db
):
    from services.credits import ledger

    email = "grace@example.com"
    make_user(db, email=email, password_hash=password_hash(PASSWORD))
    user = user_by_email(db, email)
    ledger.post(db, user_id=user.id, amount=100, kind="bonus", reference_type="test")
    db.commit()
    page, problems = open_page(browser, width=375, height=800, color_scheme="dark")
    page.goto(f"{portal}/account/")
    sign_in_with_password(page, email)
    bearer = {"Authorization": f"Bearer {access_token(page)}"}
    held = httpx.post(f"{portal}{API}/credits/holds", headers=bearer,
                      json={"credits": 30, "endpoint": "/v1/chat"})
    assert held.status_code == 201, held.text
    page.reload()
    expect(page.locator("#held")).to_have_text("30")
    expect(page.locator("#available")).to_have_text("70")
    expect(page.locator("#holds")).to_contain_text("/v1/chat")
    assert overflow(page) <= 375
    screenshot(page, "portal-375-dark-holds")

    # A key, made from the keyboard: its secret shown once, then working for its user.
    page.get_by_role("link", name="API keys").click()
    expect(heading(page, "API keys")).to_be_visible()
    tab_to(page, "key-name")
    page.keyboard.type("production server")
    page.get_by_label("Daily limit (credits, optional)").fill("50")
    page.get_by_role("button", name="Create key").click()
    secret_field = page.locator("#new-key-secret")
    expect(secret_field).to_be_focused()
    secret = secret_field.input_value()
    assert secret.startswith("bk_")
    expect(page.locator("#keys-list")).to_contain_text(secret[:12])
    assert overflow(page) <= 375
    screenshot(page, "portal-375-dark-keys")
    spent = httpx.post(f"{portal}{API}/credits/use", json={"credits": 5},
                       headers={"Authorization": f"Bearer {secret}"})
    assert spent.status_code == 200 and spent.json()["balance"] == 95, spent.text

    # Shown once: not on the page when it is opened again.
    page.reload()
    expect(page.locator("#keys-list")).to_contain_text("production server")
    assert secret not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke the key production server").click()
    expect(page.locator("#keys-list")).to_contain_text("revoked")
    refused = httpx.post(f"{portal}{API}/credits/use", json={"credits": 5},
                         headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_revoked"
    assert problems.errors == []
