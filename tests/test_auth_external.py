"""Bearer tokens of an outside identity provider: Supabase (HS256) and any JWKS issuer."""

from __future__ import annotations

import time
import uuid

import jwt
from pydantic import SecretStr
from sqlalchemy import select

from db.models import AuthIdentity, User
from tests.conftest import TEST_JWT_SECRET
from tests.conftest_auth import login_history
from tests.factories import auth_headers, make_user
from tests.support import wait_for

API = "/api/user-management"
PROFILE = f"{API}/profile"
SUPABASE_SECRET = "supabase-jwt-secret-for-tests-0123456789"
SUPABASE_ISS = "https://project.supabase.co/auth/v1"


def _supabase_token(sub: str, email: str | None = "sam@example.com", **changes) -> str:
    now = int(time.time())
    claims = {"sub": sub, "email": email, "aud": "authenticated", "role": "authenticated",
              "iss": SUPABASE_ISS, "iat": now, "exp": now + 600, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SUPABASE_SECRET,
                      algorithm="HS256")


def _get(client, token):
    return client.get(PROFILE, headers={"Authorization": f"Bearer {token}"})


def test_supabase_token_creates_the_account_on_first_sight_then_finds_it(
    make_client, db, celery_worker
):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    sub = str(uuid.uuid4())
    vouched = {"user_metadata": {"email_verified": True}}
    first = _get(client, _supabase_token(sub, **vouched))
    assert first.status_code == 200, first.text
    assert first.json()["email"] == "sam@example.com"
    second = _get(client, _supabase_token(sub, **vouched))
    assert second.json()["id"] == first.json()["id"]
    identity = db.scalars(select(AuthIdentity)).one()
    assert identity.provider == f"external:{SUPABASE_ISS}" and identity.subject == sub
    assert len(db.scalars(select(User)).all()) == 1
    wait_for(lambda: login_history(db, method="external", success=True), timeout=30,
             message="the first sight in login_history")


def test_supabase_token_links_an_existing_account_by_a_verified_email(make_client, db):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    existing = make_user(db, email="sam@example.com")
    response = _get(client, _supabase_token(str(uuid.uuid4()), email="SAM@example.com",
                                            user_metadata={"email_verified": True}))
    assert response.status_code == 200
    assert response.json()["id"] == str(existing.id)


def test_an_email_the_provider_does_not_vouch_for_links_to_no_existing_account(make_client, db):
    """A Supabase project with "Confirm email" off signs tokens before the address is proven."""
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    admin = make_user(db, email="boss@example.com", role="admin")
    for claims in ({}, {"email_verified": False}, {"user_metadata": {"email_verified": False}}):
        token = _supabase_token(str(uuid.uuid4()), email="boss@example.com", **claims)
        refused = client.get(f"{API}/admin/users", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 409, (claims, refused.text)
        assert refused.json()["error"]["code"] == "email_taken"
    assert db.scalars(select(AuthIdentity)).all() == []
    assert [u.id for u in db.scalars(select(User)).all()] == [admin.id]


def test_bad_outside_tokens_get_401_and_create_nothing(make_client, db, logs):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    sub = str(uuid.uuid4())
    now = int(time.time())
    cases = {
        "other secret": jwt.encode({"sub": sub, "aud": "authenticated", "iat": now,
                                    "exp": now + 60}, "not-the-secret-0123456789abcdefgh",
                                   algorithm="HS256"),
        "alg none": jwt.encode({"sub": sub, "aud": "authenticated", "iat": now, "exp": now + 60},
                               None, algorithm="none"),
        "wrong audience": _supabase_token(sub, aud="anon"),
        "expired": _supabase_token(sub, exp=now - 10),
        "no exp": _supabase_token(sub, exp=None),
    }
    for name, token in cases.items():
        response = _get(client, token)
        assert response.status_code == 401, (name, response.text)
    assert _get(client, cases["expired"]).json()["error"]["code"] == "token_expired"
    assert db.scalars(select(User)).all() == []
    logs.assert_absent(*cases.values())


def test_our_own_tokens_still_work_and_keep_their_errors(make_client, db, settings):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    user = make_user(db)
    assert _get(client, auth_headers(user)["Authorization"].split()[1]).status_code == 200
    now = int(time.time())
    ours_expired = jwt.encode(
        {"sub": str(user.id), "role": "user", "iat": now - 100, "exp": now - 10, "jti": "j",
         "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "typ": "access"},
        TEST_JWT_SECRET, algorithm="HS256")
    assert _get(client, ours_expired).json()["error"]["code"] == "token_expired"


def test_jwks_provider_tokens_are_verified_against_its_keys(make_client, oidc, db):
    client = make_client(external_jwks_url=f"{oidc.url}/jwks", external_jwt_issuer=oidc.url,
                         external_jwt_audience="billing-external")
    now = int(time.time())
    claims = {"sub": "jwks-user-1", "email": "kim@example.com", "email_verified": True,
              "iss": oidc.url, "aud": "billing-external", "iat": now, "exp": now + 300}
    ok = _get(client, oidc.sign(claims))
    assert ok.status_code == 200, ok.text
    assert ok.json()["email"] == "kim@example.com"

    forged = {
        "other key": oidc.sign(claims, key=oidc.other_key),
        "unknown kid": oidc.sign(claims, kid="who-knows"),
        "wrong issuer": oidc.sign({**claims, "iss": "https://evil.example.com"}),
        "wrong audience": oidc.sign({**claims, "aud": "someone-else"}),
        "hs256 with no secret configured": jwt.encode(claims, "x" * 32, algorithm="HS256"),
        "alg none": oidc.sign(claims, algorithm="none"),
    }
    for name, token in forged.items():
        response = _get(client, token)
        assert response.status_code == 401, (name, response.text)
    db.expire_all()
    assert len(db.scalars(select(User)).all()) == 1


def test_outside_token_for_a_deactivated_account_is_refused(make_client, db):
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    sub = str(uuid.uuid4())
    assert _get(client, _supabase_token(sub)).status_code == 200
    db.execute(User.__table__.update().values(is_active=False))
    db.commit()
    refused = _get(client, _supabase_token(sub))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "account_disabled"


def test_outside_tokens_are_refused_when_not_configured(client, db):
    response = _get(client, _supabase_token(str(uuid.uuid4())))
    assert response.status_code == 401
    assert db.scalars(select(User)).all() == []


def test_outside_tokens_also_work_on_the_event_loop_routes(make_client, db):
    """Spending and the admin statistics check our tokens on the event loop; an outside
    provider's token takes their general path, with the same answers."""
    client = make_client(external_jwt_secret=SecretStr(SUPABASE_SECRET))
    user = make_user(db, email="sam@example.com", credits=5)
    token = _supabase_token(str(uuid.uuid4()), user_metadata={"email_verified": True})
    headers = {"Authorization": f"Bearer {token}"}
    spent = client.post("/api/user-management/credits/use", json={"credits": 2},
                        headers=headers)
    assert spent.status_code == 200, spent.text
    assert spent.json()["balance"] == 3
    stats = "/api/user-management/admin/stats"
    assert client.get(stats, headers=headers).json()["error"]["code"] == "admin_required"
    user.role = "admin"
    db.commit()
    missing = client.get(stats, headers=headers)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "no_snapshot")
