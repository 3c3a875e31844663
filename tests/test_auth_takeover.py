"""Account takeover paths stay shut: who proves an address, a phone or a sign-in owns it.

Each test walks the attack through the real API: a password chosen by whoever registered an
address first, a phone number typed into someone else's profile, an email change link the
user has since replaced, and access tokens of a signed-out or stolen sign-in.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis as redis_lib
from sqlalchemy import select

from db.engine import get_sessionmaker
from db.models import OneTimeToken, OtpCode, User
from services.auth import onetime, refresh
from services.auth.context import AuthContext
from services.auth.otp import _code_hash
from tests.conftest_auth import google_settings
from tests.factories import auth_headers, make_user, signed_in_headers
from tests.test_auth_google import _consent, _start

API = "/api/user-management"
PROFILE = f"{API}/profile"
STRANGERS_PASSWORD = "a stranger chose this long password 77"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(client, email: str, password: str):
    return client.post("/api/auth/login", json={"email": email, "password": password})


def _registered_by_a_stranger(client, email: str) -> None:
    assert client.post("/api/auth/register",
                       json={"email": email, "password": STRANGERS_PASSWORD}).status_code == 201
    assert _login(client, email, STRANGERS_PASSWORD).status_code == 403  # unconfirmed


def test_a_password_set_before_the_address_was_proven_dies_when_google_proves_it(
    make_client, oidc, db
):
    client = make_client(admin_emails=["ada@example.com"], **google_settings(oidc))
    _registered_by_a_stranger(client, "ada@example.com")

    owner = client.get(_consent(oidc, _start(client)))  # Google: email_verified true

    assert owner.status_code == 200, owner.text
    me = client.get(PROFILE, headers=_bearer(owner.json()["access_token"])).json()
    assert me["email"] == "ada@example.com" and me["role"] == "admin"
    late = _login(client, "ada@example.com", STRANGERS_PASSWORD)
    assert late.status_code == 401, late.text
    assert db.get(User, uuid.UUID(me["id"])).password_hash is None


def test_a_password_set_before_the_address_was_proven_dies_with_a_magic_link(client, db):
    _registered_by_a_stranger(client, "vic@example.com")
    user = db.scalars(select(User).where(User.email == "vic@example.com")).one()
    # The link the owner's magic-link request mails (register answers 409 to them).
    token = onetime.create(db, purpose="magic_link", email="vic@example.com", ttl_s=900,
                           user_id=user.id)
    db.commit()

    owner = client.post("/api/auth/magic-link/verify", json={"token": token})

    assert owner.status_code == 200, owner.text
    assert _login(client, "vic@example.com", STRANGERS_PASSWORD).status_code == 401


def test_the_sign_up_confirmation_keeps_the_password_it_proves(client, db):
    email = f"own-{uuid.uuid4().hex[:8]}@example.com"
    _registered_by_a_stranger(client, email)  # here the registrant is the owner
    row = db.scalars(select(OneTimeToken).where(OneTimeToken.email == email)).one()
    raw = "confirm-" + uuid.uuid4().hex
    row.token_hash = onetime.token_hash(raw)
    db.commit()

    assert client.post("/api/auth/confirm", json={"token": raw}).status_code == 200
    assert _login(client, email, STRANGERS_PASSWORD).status_code == 200


def test_a_code_to_a_phone_typed_into_someone_elses_profile_signs_its_owner_in_apart(
    client, db, settings
):
    mallory = make_user(db, email="mallory@example.com")
    phone = "+14155550123"
    typed = client.put(PROFILE, json={"phone": phone}, headers=auth_headers(mallory))
    assert typed.status_code == 200 and typed.json()["pending_phone"] == phone
    assert typed.json()["phone"] is None  # typed, not proven: never on her account
    assert client.post("/api/auth/otp", json={"phone": phone}).status_code == 202
    code = "123456"  # the SMS is not readable here: give the stored code a known value
    row = db.scalars(select(OtpCode).where(OtpCode.phone == phone, OtpCode.user_id.is_(None),
                                           OtpCode.used_at.is_(None))).one()
    row.code_hash = _code_hash(settings, phone, code)
    db.commit()

    pair = client.post("/api/auth/otp/verify", json={"phone": phone, "code": code})

    assert pair.status_code == 200, pair.text
    me = client.get(PROFILE, headers=_bearer(pair.json()["access_token"])).json()
    assert me["id"] != str(mallory.id) and me["phone"] == phone and me["phone_confirmed"]
    db.expire_all()
    assert db.get(User, mallory.id).phone is None


def test_only_the_newest_email_change_link_moves_the_account(client, db):
    user = make_user(db, email="owner@example.com")
    headers = signed_in_headers(db, user)
    assert client.put(PROFILE, json={"email": "typo@exmaple.com"}, headers=headers).status_code == 200
    assert client.put(PROFILE, json={"email": "right@example.com"}, headers=headers).status_code == 200
    first = db.scalars(select(OneTimeToken).where(OneTimeToken.email == "typo@exmaple.com")).one()
    raw = "known-" + uuid.uuid4().hex
    first.token_hash = onetime.token_hash(raw)
    db.commit()

    replaced = client.post("/api/auth/confirm", json={"token": raw})

    assert replaced.status_code in (400, 401), replaced.text
    db.expire_all()
    assert db.get(User, user.id).email == "owner@example.com"
    assert client.get(PROFILE, headers=headers).json()["pending_email"] == "right@example.com"


def _signed_in(db, settings, user) -> refresh.TokenPair:
    pair = refresh.sign_in(db, settings, user)
    db.commit()
    return pair


def test_signing_out_stops_every_access_token_of_that_sign_in(client, db, settings):
    user = make_user(db)
    first = _signed_in(db, settings, user)
    other = _signed_in(db, settings, user)  # another device, another sign-in
    second = client.post("/api/auth/refresh", json={"refresh_token": first.refresh_token}).json()

    out = client.post("/api/auth/logout", json={"refresh_token": second["refresh_token"]})

    assert out.status_code == 204
    for token in (first.access_token, second["access_token"]):
        refused = client.get(PROFILE, headers=_bearer(token))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "token_revoked"
        spend = client.post(f"{API}/credits/use", json={"credits": 1}, headers=_bearer(token))
        assert spend.status_code == 401  # the event-loop path checks it too
    assert client.get(PROFILE, headers=_bearer(other.access_token)).status_code == 200


def test_a_reused_refresh_token_stops_the_thiefs_access_token(client, db, settings):
    user = make_user(db)
    first = _signed_in(db, settings, user)
    thief = client.post("/api/auth/refresh", json={"refresh_token": first.refresh_token}).json()

    reuse = client.post("/api/auth/refresh", json={"refresh_token": first.refresh_token})

    assert reuse.json()["error"]["code"] == "refresh_token_reused"
    assert client.get(PROFILE, headers=_bearer(thief["access_token"])).status_code == 401
    assert client.post("/api/auth/refresh",
                       json={"refresh_token": thief["refresh_token"]}).status_code == 401


def test_signing_out_during_a_rotation_leaves_no_live_refresh_token(client, db, settings):
    user = make_user(db)
    first = _signed_in(db, settings, user)
    ctx = AuthContext(settings=settings, redis=redis_lib.Redis.from_url(settings.redis_url))
    # A rotation of the token is in flight: marked used, successor inserted, not committed.
    rotating = get_sessionmaker(settings.database_url)()
    successor = refresh.rotate(rotating, ctx, first.refresh_token)
    answer: dict[str, int] = {}

    def logout() -> None:
        answer["status"] = client.post(
            "/api/auth/logout", json={"refresh_token": first.refresh_token}).status_code

    thread = threading.Thread(target=logout)
    thread.start()
    time.sleep(1.0)  # the sign-out's UPDATE waits for the rotated row's lock
    assert thread.is_alive()
    rotating.commit()
    rotating.close()
    thread.join(10)
    assert answer["status"] == 204

    again = client.post("/api/auth/refresh", json={"refresh_token": successor.refresh_token})

    assert again.status_code == 401, again.text
    assert client.get(PROFILE, headers=_bearer(successor.access_token)).status_code == 401
