"""Whoever set an account up before its owner proved the address is out once they do.

Issue 13, findings 1 and 6, walked through the real API as the review reproduced them: a
stranger registers the owner's (admin) address while confirmation is off and keeps a sign-in;
asks for an email change first; or comes through an outside provider that does not vouch for
the address. Proving the address (here by magic link) ends every sign-in of the account,
voids pending email changes and unlinks other identities. And a deactivation ends sign-ins
for good: reactivating the account brings none of them back.
"""

from __future__ import annotations

import time
import uuid

import jwt
from pydantic import SecretStr
from sqlalchemy import select

from db.models import AuthIdentity, User
from services.auth.refresh import sign_in
from settings import get_settings
from tests.conftest_auth import token_of
from tests.factories import auth_headers, make_user
from tests.smtp import link_in
from tests.support import wait_for

API = "/api/user-management"
PROFILE = f"{API}/profile"
BOSS = "boss@example.com"
STRANGERS_PASSWORD = "a stranger chose this long password 77"
SUPABASE_SECRET = "handover-supabase-secret-" + "s" * 20
SUPABASE_ISS = "https://handover.supabase.co/auth/v1"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stranger_signs_up_and_in(client, email: str) -> dict:
    assert client.post("/api/auth/register",
                       json={"email": email, "password": STRANGERS_PASSWORD}).status_code == 201
    pair = client.post("/api/auth/login", json={"email": email, "password": STRANGERS_PASSWORD})
    assert pair.status_code == 200, pair.text  # confirmation is off
    return pair.json()


def _owner_proves_by_magic_link(client, mailbox, email: str) -> dict:
    assert client.post("/api/auth/magic-link", json={"email": email}).status_code == 202
    mail = wait_for(lambda: [m for m in mailbox.to(email) if m["Subject"] == "Your sign-in link"],
                    timeout=30, message=f"the sign-in link to {email}")[0]
    token = token_of(link_in(mail))
    pair = client.post("/api/auth/magic-link/verify", json={"token": token})
    assert pair.status_code == 200, pair.text
    return pair.json()


def _refused(client, access_token: str) -> None:
    for response in (
        client.get(PROFILE, headers=_bearer(access_token)),
        client.get(f"{API}/admin/users", headers=_bearer(access_token)),
        client.post(f"{API}/credits/use", json={"credits": 1}, headers=_bearer(access_token)),
    ):
        assert response.status_code == 401, response.text


def test_the_owners_magic_link_ends_the_strangers_sign_in_and_admin_goes_to_the_owner(
    make_client, db, celery_worker, mailbox
):
    client = make_client(require_email_confirmation=False, admin_emails=[BOSS])
    stranger = _stranger_signs_up_and_in(client, BOSS)
    before = client.get(f"{API}/admin/users", headers=_bearer(stranger["access_token"]))
    assert before.status_code == 403  # nobody has proven the address yet

    owner = _owner_proves_by_magic_link(client, mailbox, BOSS)

    _refused(client, stranger["access_token"])
    again = client.post("/api/auth/refresh", json={"refresh_token": stranger["refresh_token"]})
    assert again.status_code == 401, again.text
    me = client.get(PROFILE, headers=_bearer(owner["access_token"])).json()
    assert me["role"] == "admin" and me["email"] == BOSS
    assert client.get(f"{API}/admin/users",
                      headers=_bearer(owner["access_token"])).status_code == 200
    assert client.post("/api/auth/login", json={
        "email": BOSS, "password": STRANGERS_PASSWORD}).status_code == 401


def test_an_email_change_asked_for_before_the_owner_proved_the_address_is_void(
    make_client, db, celery_worker, mailbox
):
    client = make_client(require_email_confirmation=False, admin_emails=[BOSS])
    stranger = _stranger_signs_up_and_in(client, BOSS)
    asked = client.put(PROFILE, headers=_bearer(stranger["access_token"]), json={
        "email": "stranger@example.net", "current_password": STRANGERS_PASSWORD})
    assert asked.status_code == 200 and asked.json()["pending_email"] == "stranger@example.net"
    change_link = token_of(link_in(mailbox.wait_for("stranger@example.net")))
    client.post("/api/auth/logout", json={"refresh_token": stranger["refresh_token"]})

    owner = _owner_proves_by_magic_link(client, mailbox, BOSS)
    late = client.post("/api/auth/confirm", json={"token": change_link})

    assert late.status_code == 400, late.text
    me = client.get(PROFILE, headers=_bearer(owner["access_token"])).json()
    assert (me["email"], me["role"], me["pending_email"]) == (BOSS, "admin", None)


def _supabase(sub: str, email: str, **claims) -> str:
    now = int(time.time())
    body = {"sub": sub, "email": email, "aud": "authenticated", "role": "authenticated",
            "iss": SUPABASE_ISS, "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, SUPABASE_SECRET, algorithm="HS256")


def test_a_provider_that_does_not_vouch_for_an_address_never_puts_it_on_an_account(
    make_client, db, celery_worker, mailbox
):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET), admin_emails=[BOSS])
    strangers_sub = str(uuid.uuid4())
    first = client.get(PROFILE, headers=_bearer(_supabase(strangers_sub, BOSS)))
    assert first.status_code == 200, first.text
    assert first.json()["email"] is None and first.json()["role"] == "user"

    # The owner can still sign up with the address, prove it, and is the admin.
    registered = client.post("/api/auth/register",
                             json={"email": BOSS, "password": "the owners own password 1"})
    assert registered.status_code == 201, registered.text
    owner = _owner_proves_by_magic_link(client, mailbox, BOSS)
    me = client.get(PROFILE, headers=_bearer(owner["access_token"])).json()
    assert me["id"] != first.json()["id"] and me["role"] == "admin"
    later = client.get(PROFILE, headers=_bearer(_supabase(strangers_sub, "any@example.org")))
    assert later.json()["id"] == first.json()["id"] != me["id"]


def test_proving_the_address_unlinks_an_identity_a_provider_never_vouched_for(
    make_client, db, celery_worker, mailbox
):
    """An account today's code left behind: a provider's unproven address, its identity."""
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET), admin_emails=[BOSS])
    strangers_sub = str(uuid.uuid4())
    account = User(email=BOSS)
    db.add(account)
    db.flush()
    db.add(AuthIdentity(user_id=account.id, provider=f"external:{SUPABASE_ISS}",
                        subject=strangers_sub, email=BOSS))
    db.commit()

    owner = _owner_proves_by_magic_link(client, mailbox, BOSS)

    me = client.get(PROFILE, headers=_bearer(owner["access_token"])).json()
    assert me["id"] == str(account.id) and me["role"] == "admin"
    assert db.scalars(select(AuthIdentity).where(AuthIdentity.user_id == account.id)).all() == []
    stranger = client.get(PROFILE, headers=_bearer(_supabase(strangers_sub, "x@example.org")))
    assert stranger.status_code == 200 and stranger.json()["id"] != str(account.id)


def test_reactivating_an_account_brings_none_of_its_old_sign_ins_back(client, db):
    user = make_user(db, email="paused@example.com")
    admin = auth_headers(make_user(db, role="admin"))
    pair = sign_in(db, get_settings(), user)
    db.commit()
    assert client.get(PROFILE, headers=_bearer(pair.access_token)).status_code == 200

    assert client.post(f"{API}/admin/users/{user.id}/deactivate", json={"reason": "fraud"},
                       headers=admin).status_code == 200
    assert client.post(f"{API}/admin/users/{user.id}/activate", json={"reason": "cleared"},
                       headers=admin).status_code == 200

    old = client.get(PROFILE, headers=_bearer(pair.access_token))
    assert old.status_code == 401 and old.json()["error"]["code"] == "token_revoked"
    spend = client.post(f"{API}/credits/use", json={"credits": 1},
                        headers=_bearer(pair.access_token))
    assert spend.status_code == 401
    again = client.post("/api/auth/refresh", json={"refresh_token": pair.refresh_token})
    assert again.status_code == 401
