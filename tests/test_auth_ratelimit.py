"""Rate limits per client IP and per account, counted in Redis; excess gets 429 + Retry-After."""

from __future__ import annotations

from sqlalchemy import select

from db.models import OtpCode, User
from services.auth import passwords
from tests.conftest_auth import STRONG_PASSWORD, login_history
from tests.factories import make_user
from tests.support import wait_for


def _login(client, email="rl@example.com", password="wrong-password-1"):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def test_login_is_limited_per_account_with_retry_after(make_client, db, celery_worker):
    make_user(db, email="rl@example.com", password_hash=passwords.hash_password(STRONG_PASSWORD))
    client = make_client(rate_limit_login="3/minute")
    assert [_login(client).status_code for _ in range(3)] == [401, 401, 401]
    limited = _login(client, password=STRONG_PASSWORD)  # even the right password now waits
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # The same account from another address is still limited: the account has its own bucket.
    elsewhere = make_client(rate_limit_login="3/minute", client_ip="203.0.113.9")
    assert _login(elsewhere, password=STRONG_PASSWORD).status_code == 429
    wait_for(lambda: login_history(db, reason="rate_limited"), timeout=30,
             message="the refused attempt in login_history")


def test_login_is_limited_per_ip_across_accounts(make_client, db):
    client = make_client(rate_limit_login="4/minute")
    codes = [_login(client, email=f"u{i}@example.com").status_code for i in range(5)]
    assert codes == [401, 401, 401, 401, 429]
    other_ip = make_client(rate_limit_login="4/minute", client_ip="203.0.113.10")
    assert _login(other_ip, email="fresh@example.com").status_code == 401


def test_register_is_limited_and_the_refused_sign_up_creates_nothing(make_client, db):
    client = make_client(rate_limit_register="2/minute")
    for i in range(2):
        response = client.post("/api/auth/register",
                               json={"email": f"r{i}@example.com", "password": STRONG_PASSWORD})
        assert response.status_code == 201
    refused = client.post("/api/auth/register",
                          json={"email": "r9@example.com", "password": STRONG_PASSWORD})
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    db.expire_all()
    assert {u.email for u in db.scalars(select(User))} == {"r0@example.com", "r1@example.com"}


def test_otp_sending_is_limited_per_phone(make_client, db):
    phone = "+14155550199"
    client = make_client(rate_limit_otp="2/minute")
    assert [client.post("/api/auth/otp", json={"phone": phone}).status_code
            for _ in range(3)] == [202, 202, 429]
    assert len(db.scalars(select(OtpCode)).all()) == 2


def test_magic_link_is_limited_per_email(make_client, db):
    make_user(db, email="ml@example.com")
    client = make_client(rate_limit_magic_link="1/minute")
    assert client.post("/api/auth/magic-link", json={"email": "ml@example.com"}).status_code == 202
    refused = client.post("/api/auth/magic-link", json={"email": "ml@example.com"})
    assert refused.status_code == 429
