"""Changing the email or phone of an account: no oracle, no quiet takeover.

Issue 13, finding 2. Changes are rate limited; an email change needs the current password
(or a fresh sign-in without one); the answer never tells whether an address or number is
taken; confirming a change ends the account's other sign-ins and mails the old address a
link that undoes it; an address in ``BILLING_ADMIN_EMAILS`` never promotes through a change.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from db.base import utc_now
from db.models import OtpCode, RefreshToken, User
from services.auth import passwords
from services.auth.otp import _code_hash
from services.auth.refresh import sign_in
from settings import get_settings
from tests.conftest_auth import token_of
from tests.factories import make_user, signed_in_headers
from tests.smtp import body, link_in
from tests.support import wait_for

PROFILE = "/api/user-management/profile"
PASSWORD = "the owners own password 31"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _with_password(db, email: str) -> User:
    return make_user(db, email=email, password_hash=passwords.hash_password(PASSWORD))


def _mail(mailbox, to: str, subject: str):
    return wait_for(lambda: [m for m in mailbox.to(to) if m["Subject"] == subject],
                    timeout=30, message=f"'{subject}' to {to}")[0]


def test_email_and_phone_changes_are_rate_limited(client, db):
    user = _with_password(db, "limited@example.com")
    headers = signed_in_headers(db, user)
    emails = [client.put(PROFILE, headers=headers, json={
        "email": f"n{i}@example.com", "current_password": PASSWORD}) for i in range(6)]
    phones = [client.put(PROFILE, headers=headers, json={"phone": f"+1415555010{i}"})
              for i in range(6)]

    # BILLING_RATE_LIMIT_EMAIL_CHANGE / _PHONE_CHANGE: 5 a minute by default.
    assert [r.status_code for r in emails] == [200] * 5 + [429]
    assert [r.status_code for r in phones] == [200] * 5 + [429]
    assert emails[5].json()["error"]["code"] == "rate_limited" and emails[5].headers["Retry-After"]


def test_an_email_change_needs_the_current_password_or_a_fresh_sign_in(client, db):
    with_password = _with_password(db, "pw@example.com")
    headers = signed_in_headers(db, with_password)
    cases = [({}, "reauthentication_required"),
             ({"current_password": "not the password at all"}, "invalid_current_password")]
    for extra, code in cases:
        refused = client.put(PROFILE, headers=headers, json={"email": "x@example.com", **extra})
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, code)
    ok = client.put(PROFILE, headers=headers,
                    json={"email": "x@example.com", "current_password": PASSWORD})
    assert ok.status_code == 200 and ok.json()["pending_email"] == "x@example.com"

    passwordless = make_user(db, email="magic@example.com")
    pair = sign_in(db, get_settings(), passwordless)
    db.commit()
    db.execute(update(RefreshToken).where(RefreshToken.user_id == passwordless.id)
               .values(created_at=utc_now() - timedelta(hours=2)))
    db.commit()  # signed in two hours ago: a stolen access token's age
    stale = client.put(PROFILE, headers=_bearer(pair.access_token),
                       json={"email": "y@example.com"})
    assert stale.status_code == 403 and stale.json()["error"]["code"] == "reauthentication_required"
    fresh = client.put(PROFILE, headers=signed_in_headers(db, passwordless),
                       json={"email": "y@example.com"})
    assert fresh.status_code == 200, fresh.text


def test_a_change_to_a_taken_email_or_phone_answers_as_a_free_one_and_tells_the_owner(
    client, db, celery_worker, mailbox, sms_box
):
    make_user(db, email="taken@example.com", phone="+14155550111",
              phone_confirmed_at=utc_now())
    user = _with_password(db, "asker@example.com")
    headers = signed_in_headers(db, user)

    def change(**fields):
        response = client.put(PROFILE, headers=headers, json=fields)
        assert response.status_code == 200, response.text
        shown = response.json()
        return {k: shown[k] for k in ("email", "pending_email", "phone", "pending_phone")}

    free = change(email="free@example.com", current_password=PASSWORD)
    taken = change(email="taken@example.com", current_password=PASSWORD)
    assert (free["email"], free["pending_email"]) == ("asker@example.com", "free@example.com")
    assert (taken["email"], taken["pending_email"]) == ("asker@example.com", "taken@example.com")
    notice = _mail(mailbox, "taken@example.com", "Someone tried to use your email address")
    assert "http" not in body(notice)  # a notice, no link that could move any account
    assert _mail(mailbox, "free@example.com", "Confirm your new email address")

    free_phone, taken_phone = change(phone="+14155550122"), change(phone="+14155550111")
    assert (free_phone["phone"], free_phone["pending_phone"]) == (None, "+14155550122")
    assert (taken_phone["phone"], taken_phone["pending_phone"]) == (None, "+14155550111")
    # Only whoever holds the phone learns that it signs in to another account.
    code = sms_box.code_for("+14155550111")
    held = client.post(f"{PROFILE}/phone/verify", headers=headers, json={"code": code})
    assert (held.status_code, held.json()["error"]["code"]) == (409, "phone_taken")


def test_a_new_phone_is_the_accounts_once_its_code_comes_back(client, db, settings):
    user = make_user(db, email="phone@example.com")
    headers = signed_in_headers(db, user)
    assert client.put(PROFILE, headers=headers, json={"phone": "+14155550133"}).status_code == 200
    row = db.scalars(select(OtpCode).where(OtpCode.user_id == user.id)).one()
    row.code_hash = _code_hash(settings, "+14155550133", "424242")  # the SMS is not read here
    db.commit()

    wrong = client.post(f"{PROFILE}/phone/verify", headers=headers, json={"code": "000000"})
    right = client.post(f"{PROFILE}/phone/verify", headers=headers, json={"code": "424242"})

    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "invalid_code")
    assert right.status_code == 200, right.text
    shown = right.json()
    assert (shown["phone"], shown["phone_confirmed"], shown["pending_phone"]) == (
        "+14155550133", True, None)


def test_confirming_a_change_ends_other_sign_ins_and_the_old_address_can_undo_it(
    client, db, celery_worker, mailbox
):
    user = _with_password(db, "victim@example.com")
    thief = sign_in(db, get_settings(), user)  # a stolen sign-in, and the owner's phone's
    owners_phone = sign_in(db, get_settings(), user)
    db.commit()

    asked = client.put(PROFILE, headers=_bearer(thief.access_token), json={
        "email": "thief@example.net", "current_password": PASSWORD})
    assert asked.status_code == 200
    link = token_of(link_in(_mail(mailbox, "thief@example.net", "Confirm your new email address")))
    assert client.post("/api/auth/confirm", json={"token": link}).status_code == 200

    assert client.get(PROFILE, headers=_bearer(owners_phone.access_token)).status_code == 401
    assert client.post("/api/auth/refresh",
                       json={"refresh_token": owners_phone.refresh_token}).status_code == 401
    assert client.get(PROFILE, headers=_bearer(thief.access_token)).status_code == 200

    notice = _mail(mailbox, "victim@example.com", "Your email address was changed")
    assert "thief@example.net" in body(notice)
    undone = client.post("/api/auth/email-change/undo", json={"token": token_of(link_in(notice))})

    assert undone.status_code == 200 and undone.json()["email"] == "victim@example.com"
    assert client.get(PROFILE, headers=_bearer(thief.access_token)).status_code == 401
    assert client.post("/api/auth/refresh",
                       json={"refresh_token": thief.refresh_token}).status_code == 401
    # The thief knew the password: it is gone; the owner signs in by magic link.
    assert client.post("/api/auth/login", json={
        "email": "victim@example.com", "password": PASSWORD}).status_code == 401
    assert client.post("/api/auth/login", json={
        "email": "thief@example.net", "password": PASSWORD}).status_code == 401
    db.expire_all()
    restored = db.get(User, user.id)
    assert restored.email == "victim@example.com" and restored.email_confirmed_at is not None
    again = client.post("/api/auth/email-change/undo", json={"token": token_of(link_in(notice))})
    assert again.status_code == 400


def test_an_admin_address_never_promotes_an_account_through_an_email_change(
    make_client, db, celery_worker, mailbox
):
    client = make_client(admin_emails=["boss@example.com"])
    user = _with_password(db, "climber@example.com")
    headers = signed_in_headers(db, user)
    assert client.put(PROFILE, headers=headers, json={
        "email": "boss@example.com", "current_password": PASSWORD}).status_code == 200
    link = token_of(link_in(_mail(mailbox, "boss@example.com", "Confirm your new email address")))

    assert client.post("/api/auth/confirm", json={"token": link}).status_code == 200  # phished
    assert client.post("/api/auth/magic-link", json={"email": "boss@example.com"}).status_code == 202
    magic = token_of(link_in(_mail(mailbox, "boss@example.com", "Your sign-in link")))
    signed = client.post("/api/auth/magic-link/verify", json={"token": magic})

    assert signed.status_code == 200
    assert client.get(PROFILE, headers=headers).json()["role"] == "user"
    db.expire_all()
    assert db.get(User, user.id).role == "user"
