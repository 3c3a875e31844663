"""Access and refresh tokens: strict verification, rotation, reuse detection, sign-out."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import jwt
from sqlalchemy import select, update

from db.base import utc_now
from db.models import RefreshToken, User
from services.auth import passwords
from services.auth.tokens import create_access_token
from tests.conftest import TEST_JWT_SECRET
from tests.conftest_auth import STRONG_PASSWORD, login_history
from tests.factories import auth_headers, make_user
from tests.support import wait_for

PROFILE = "/api/user-management/profile"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _sign_in(client, db, email: str = "tok@example.com") -> dict:
    if db.scalar(select(User).where(User.email == email)) is None:
        make_user(db, email=email, password_hash=passwords.hash_password(STRONG_PASSWORD))
    response = client.post("/api/auth/login", json={"email": email, "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()


def _claims(user: User, **changes) -> dict:
    now = int(time.time())
    claims = {"sub": str(user.id), "role": user.role, "iat": now, "nbf": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, "iss": "billing", "aud": "billing-api", "typ": "access"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_access_token_carries_the_specified_claims(client, db, settings):
    pair = _sign_in(client, db)
    claims = jwt.decode(pair["access_token"], TEST_JWT_SECRET, algorithms=["HS256"],
                        audience=settings.jwt_audience, issuer=settings.jwt_issuer)
    assert {"sub", "exp", "iat", "jti", "iss", "aud", "role"} <= set(claims)
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_s
    assert claims["role"] == "user"


def test_forged_expired_and_malformed_access_tokens_get_401(client, db, logs):
    user = make_user(db)
    other_key = "another-secret-that-is-long-enough-xxxxxxxxxx"
    header, payload, _ = jwt.encode(_claims(user), TEST_JWT_SECRET, algorithm="HS256").split(".")
    cases = {
        "alg none": jwt.encode(_claims(user), None, algorithm="none"),
        "other key": jwt.encode(_claims(user), other_key, algorithm="HS256"),
        "expired": jwt.encode(_claims(user, exp=int(time.time()) - 5), TEST_JWT_SECRET,
                              algorithm="HS256"),
        "wrong audience": jwt.encode(_claims(user, aud="someone-else"), TEST_JWT_SECRET,
                                     algorithm="HS256"),
        "wrong issuer": jwt.encode(_claims(user, iss="evil"), TEST_JWT_SECRET, algorithm="HS256"),
        "no jti": jwt.encode(_claims(user, jti=None), TEST_JWT_SECRET, algorithm="HS256"),
        "no role": jwt.encode(_claims(user, role=None), TEST_JWT_SECRET, algorithm="HS256"),
        "tampered payload": f"{header}.{payload}x.{'A' * 43}",
        "garbage": "not.a.jwt",
        "unknown user": jwt.encode(_claims(user, sub=str(uuid.uuid4())), TEST_JWT_SECRET,
                                   algorithm="HS256"),
    }
    for name, token in cases.items():
        response = client.get(PROFILE, headers=_bearer(token))
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["code"] in {"invalid_token", "token_expired"}, name
    expired = client.get(PROFILE, headers=_bearer(cases["expired"]))
    assert expired.json()["error"]["code"] == "token_expired"
    assert client.get(PROFILE).json()["error"]["code"] == "not_authenticated"
    logs.assert_absent(*cases.values())


def test_deactivated_users_tokens_stop_working_at_once(client, db):
    user = make_user(db)
    headers = auth_headers(user)
    assert client.get(PROFILE, headers=headers).status_code == 200
    db.execute(update(User).where(User.id == user.id).values(is_active=False))
    db.commit()
    refused = client.get(PROFILE, headers=headers)
    assert refused.status_code == 401


def test_refresh_rotates_and_the_old_token_stops_working(client, db):
    first = _sign_in(client, db)
    second = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert client.get(PROFILE, headers=_bearer(pair["access_token"])).status_code == 200
    third = client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert third.status_code == 200
    rows = db.scalars(select(RefreshToken)).all()
    assert len(rows) == 3 and len({r.family_id for r in rows}) == 1
    raw = first["refresh_token"].encode()
    assert all(raw not in r.token_hash and len(r.token_hash) == 32 for r in rows)


def test_reused_refresh_token_revokes_its_whole_family(client, db, celery_worker, logs):
    stolen = _sign_in(client, db)
    other_session = _sign_in(client, db)  # another device: a different family
    legit = client.post("/api/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
    assert legit.status_code == 200

    reuse = client.post("/api/auth/refresh", json={"refresh_token": stolen["refresh_token"]})
    assert reuse.status_code == 401
    assert reuse.json()["error"]["code"] == "refresh_token_reused"

    # The thief's replay also killed the legitimate holder's newer token of that family...
    newer = client.post("/api/auth/refresh", json={"refresh_token": legit.json()["refresh_token"]})
    assert newer.status_code == 401
    assert newer.json()["error"]["code"] == "refresh_token_revoked"
    # ... but not the other device's session.
    ok = client.post("/api/auth/refresh", json={"refresh_token": other_session["refresh_token"]})
    assert ok.status_code == 200

    db.expire_all()
    family = db.scalar(select(RefreshToken.family_id).where(RefreshToken.used_at.is_not(None))
                       .order_by(RefreshToken.created_at).limit(1))
    family_rows = db.scalars(select(RefreshToken).where(RefreshToken.family_id == family)).all()
    assert family_rows and all(r.revoked_at is not None for r in family_rows)
    wait_for(lambda: login_history(db, reason="refresh_token_reused"), timeout=30,
             message="the reuse in login_history")
    logs.assert_absent(stolen["refresh_token"], legit.json()["refresh_token"])


def test_expired_unknown_and_oversized_refresh_tokens_are_refused(client, db):
    pair = _sign_in(client, db)
    db.execute(update(RefreshToken).values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()
    expired = client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "refresh_token_expired"
    unknown = client.post("/api/auth/refresh", json={"refresh_token": "x" * 43})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_refresh_token"
    huge = client.post("/api/auth/refresh", json={"refresh_token": "x" * 5000})
    assert huge.status_code == 422
    db.expire_all()
    assert db.scalars(select(RefreshToken)).one().used_at is None


def test_refresh_for_a_deactivated_account_is_refused(client, db):
    pair = _sign_in(client, db)
    db.execute(update(User).values(is_active=False))
    db.commit()
    response = client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "account_disabled"


def test_logout_revokes_the_refresh_family_and_the_access_token(client, db):
    pair = _sign_in(client, db)
    headers = _bearer(pair["access_token"])
    response = client.post("/api/auth/logout", json={"refresh_token": pair["refresh_token"]},
                           headers=headers)
    assert response.status_code == 204
    assert client.get(PROFILE, headers=headers).json()["error"]["code"] == "token_revoked"
    again = client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401 and again.json()["error"]["code"] == "refresh_token_revoked"
    # Signing out twice, or with an unknown token, is harmless.
    assert client.post("/api/auth/logout", json={"refresh_token": "y" * 43}).status_code == 204


def test_token_made_by_create_access_token_is_accepted(client, db, settings):
    user = make_user(db)
    token = create_access_token(settings, user_id=user.id, role=user.role)
    assert client.get(PROFILE, headers=_bearer(token)).json()["id"] == str(user.id)


def test_concurrent_use_of_one_refresh_token_yields_one_pair_and_revokes_the_family(
    client, db, live_api
):
    import threading

    import httpx

    pair = _sign_in(client, db)
    barrier = threading.Barrier(4)
    results: list[httpx.Response] = []

    def use() -> None:
        barrier.wait()
        results.append(httpx.post(f"{live_api}/api/auth/refresh", timeout=60,
                                  json={"refresh_token": pair["refresh_token"]}))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 401, 401, 401]
    winner = next(r for r in results if r.status_code == 200).json()
    # Reuse was seen, so even the winner's new token belongs to a revoked family.
    after = client.post("/api/auth/refresh", json={"refresh_token": winner["refresh_token"]})
    assert after.status_code == 401
    db.expire_all()
    assert all(r.revoked_at is not None for r in db.scalars(select(RefreshToken)))
