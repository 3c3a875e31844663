"""Email and password: sign-up, confirmation by a mailed link, sign-in, login history."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from db.models import OneTimeToken, User
from services.auth import passwords
from tests.conftest_auth import (
    STRONG_PASSWORD,
    login_history,
    register_and_confirm,
    token_of,
)
from tests.factories import make_user
from tests.smtp import body, link_in
from tests.support import wait_for


def _users(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(User))


def test_sign_up_confirm_by_mailed_link_then_sign_in(client, db, celery_worker, mailbox, logs):
    email = "Ada.Lovelace@Example.COM"
    response = client.post("/api/auth/register",
                           json={"email": email, "password": STRONG_PASSWORD,
                                 "full_name": "Ada Lovelace"})
    assert response.status_code == 201, response.text
    assert response.json()["email"] == "ada.lovelace@example.com"
    assert response.json()["email_confirmation_required"] is True

    user = db.scalars(select(User)).one()
    assert user.email == "ada.lovelace@example.com"
    assert user.password_hash.startswith("$argon2id$")
    assert STRONG_PASSWORD not in user.password_hash

    # Until the address is confirmed, sign-in is refused with a code the client can act on.
    early = client.post("/api/auth/login",
                        json={"email": "ada.lovelace@example.com", "password": STRONG_PASSWORD})
    assert early.status_code == 403
    assert early.json()["error"]["code"] == "email_not_confirmed"

    mail = mailbox.wait_for("ada.lovelace@example.com")
    assert mail["Subject"] == "Confirm your email address"
    token = token_of(link_in(mail))
    stored = db.scalars(select(OneTimeToken)).one()
    assert stored.token_hash != token.encode() and token.encode() not in stored.token_hash

    confirmed = client.post("/api/auth/confirm", json={"token": token})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json() == {"email": "ada.lovelace@example.com", "confirmed": True}

    login = client.post("/api/auth/login",
                        json={"email": " ADA.lovelace@example.com", "password": STRONG_PASSWORD})
    assert login.status_code == 200, login.text
    pair = login.json()
    assert pair["token_type"] == "bearer" and pair["expires_in"] == 3600
    profile = client.get("/api/user-management/profile",
                         headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert profile.status_code == 200
    assert profile.json()["email_confirmed"] is True
    assert profile.json()["full_name"] == "Ada Lovelace"

    logs.assert_absent(token, STRONG_PASSWORD, pair["access_token"], pair["refresh_token"])


def test_confirmation_link_works_once(client, db, celery_worker, mailbox):
    client.post("/api/auth/register", json={"email": "once@example.com",
                                             "password": STRONG_PASSWORD})
    token = token_of(link_in(mailbox.wait_for("once@example.com")))
    assert client.post("/api/auth/confirm", json={"token": token}).status_code == 200
    again = client.post("/api/auth/confirm", json={"token": token})
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "token_used"


def test_login_history_records_each_attempt_with_method_ip_agent_and_reason(
    client, db, celery_worker, mailbox
):
    register_and_confirm(client, mailbox, "hist@example.com")
    client.post("/api/auth/login", json={"email": "hist@example.com", "password": "wrong-one-123"},
                headers={"User-Agent": "pytest-agent/1.0"})
    client.post("/api/auth/login", json={"email": "nobody@example.com", "password": "x" * 12})
    user = db.scalars(select(User)).one()

    rows = wait_for(lambda: len(login_history(db)) >= 3 and login_history(db), timeout=30,
                    message="three login_history rows written by the worker")
    by_reason = {(r.success, r.reason): r for r in rows}
    assert by_reason[(True, None)].user_id == user.id
    assert by_reason[(True, None)].method == "password"
    wrong = by_reason[(False, "wrong_password")]
    assert wrong.user_id == user.id and wrong.user_agent == "pytest-agent/1.0"
    assert wrong.identifier == "hist@example.com"
    unknown = by_reason[(False, "unknown_account")]
    assert unknown.user_id is None and unknown.identifier == "nobody@example.com"


def test_wrong_password_and_unknown_account_get_the_same_answer(client, db):
    make_user(db, email="known@example.com", password_hash=passwords.hash_password(STRONG_PASSWORD))
    wrong = client.post("/api/auth/login",
                        json={"email": "known@example.com", "password": "not-the-password"})
    unknown = client.post("/api/auth/login",
                          json={"email": "unknown@example.com", "password": "not-the-password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"


def test_weak_passwords_are_refused_and_nothing_is_created(client, db):
    cases = {
        "short": "password_too_short",
        "qwertyuiop": "password_too_common",  # in the shipped common-password list
        "Password1234": "password_too_common",
        "mallory@example.com": "password_like_email",
    }
    for password, code in cases.items():
        response = client.post("/api/auth/register",
                               json={"email": "mallory@example.com", "password": password})
        assert response.status_code == 400, (password, response.text)
        assert response.json()["error"]["code"] == code
    assert _users(db) == 0


def test_common_password_list_is_shipped_and_large():
    common = passwords.common_passwords()
    assert len(common) > 10_000
    assert "password" in common and "iloveyou" in common


def test_duplicate_email_is_a_conflict(client, db):
    make_user(db, email="taken@example.com")
    response = client.post("/api/auth/register",
                           json={"email": "TAKEN@example.com", "password": STRONG_PASSWORD})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "email_taken"
    assert _users(db) == 1


def test_malformed_and_oversized_sign_up_fields_are_4xx_and_change_nothing(client, db):
    bad_bodies = [
        {"email": "not-an-email", "password": STRONG_PASSWORD},
        {"email": "a@example.com", "password": "x" * 10_000},
        {"email": "a" * 400 + "@example.com", "password": STRONG_PASSWORD},
        {"email": "a@example.com", "password": STRONG_PASSWORD, "role": "admin"},
        {"email": "a@example.com"},
        {"email": 12, "password": STRONG_PASSWORD},
    ]
    for bad in bad_bodies:
        response = client.post("/api/auth/register", json=bad)
        assert 400 <= response.status_code < 500, (bad, response.text)
        assert "error" in response.json()
    raw = client.post("/api/auth/register", content=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "malformed_json"
    assert _users(db) == 0


def test_admin_emails_promote_at_confirmed_sign_up(make_client, db, celery_worker, mailbox):
    client = make_client(admin_emails=["boss@example.com"])
    register_and_confirm(client, mailbox, "boss@example.com")
    register_and_confirm(client, mailbox, "staff@example.com")
    db.expire_all()
    roles = {u.email: u.role for u in db.scalars(select(User))}
    assert roles == {"boss@example.com": "admin", "staff@example.com": "user"}


def test_login_allowed_before_confirmation_when_not_required(make_client, db, celery_worker,
                                                             mailbox):
    client = make_client(require_email_confirmation=False)
    assert client.post("/api/auth/register", json={"email": "lax@example.com",
                                                   "password": STRONG_PASSWORD}).status_code == 201
    login = client.post("/api/auth/login",
                        json={"email": "lax@example.com", "password": STRONG_PASSWORD})
    assert login.status_code == 200
    # The confirmation mail still goes out: it proves the address for later.
    assert "confirm" in body(mailbox.wait_for("lax@example.com")).lower()


def test_disabled_account_cannot_sign_in(client, db):
    make_user(db, email="gone@example.com", active=False,
              password_hash=passwords.hash_password(STRONG_PASSWORD))
    response = client.post("/api/auth/login",
                           json={"email": "gone@example.com", "password": STRONG_PASSWORD})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "account_disabled"


def test_admin_routes_answer_403_to_users_and_200_to_promoted_admins(client, db, celery_worker,
                                                                     mailbox):
    pair = register_and_confirm(client, mailbox, "climber@example.com")
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    refused = client.get("/api/user-management/admin/credit-packages", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"

    from services.auth import accounts

    accounts.promote(db, email="climber@example.com")
    db.commit()
    # The role is read from the account, so a new sign-in carries it.
    again = client.post("/api/auth/login",
                        json={"email": "climber@example.com", "password": STRONG_PASSWORD})
    headers = {"Authorization": f"Bearer {again.json()['access_token']}"}
    assert client.get("/api/user-management/admin/credit-packages", headers=headers).status_code \
        == 200


def test_unused_token_ids_are_not_guessable(client, db, celery_worker, mailbox):
    client.post("/api/auth/register", json={"email": "guess@example.com",
                                             "password": STRONG_PASSWORD})
    guess = client.post("/api/auth/confirm", json={"token": uuid.uuid4().hex})
    assert guess.status_code == 400 and guess.json()["error"]["code"] == "invalid_token"
    db.expire_all()
    assert db.scalars(select(User)).one().email_confirmed_at is None
