"""Google sign-in against a loopback OpenID provider that signs real RS256 tokens."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from db.models import AuthIdentity, User
from tests.conftest_auth import google_settings, login_history
from tests.factories import make_user
from tests.support import wait_for


@pytest.fixture
def google_client(make_client, oidc):
    return make_client(**google_settings(oidc))


def _start(client) -> dict[str, str]:
    response = client.get("/api/auth/oauth/google/authorize", follow_redirects=False)
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def _consent(oidc, query: dict[str, str]) -> str:
    """What the browser does at the provider, then on the /auth/google page it is sent back
    to: returns the API callback's path with the code and state."""
    import httpx

    response = httpx.get(f"{oidc.url}/authorize", params=query, follow_redirects=False)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.path == "/auth/google"
    return f"/api/auth/oauth/google/callback?{location.query}"


def test_google_sign_in_creates_then_finds_the_account(google_client, oidc, db, celery_worker,
                                                       logs):
    query = _start(google_client)
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]
    assert query["scope"] == "openid email profile"
    callback = _consent(oidc, query)
    response = google_client.get(callback)
    assert response.status_code == 200, response.text
    pair = response.json()

    user = db.scalars(select(User)).one()
    assert user.email == "ada@example.com" and user.email_confirmed_at is not None
    assert user.full_name == "Ada Lovelace"
    identity = db.scalars(select(AuthIdentity)).one()
    assert (identity.provider, identity.subject, identity.user_id) == (
        "google", "google-sub-1", user.id)

    again = google_client.get(_consent(oidc, _start(google_client)))
    assert again.status_code == 200
    db.expire_all()
    assert len(db.scalars(select(User)).all()) == 1
    profile = google_client.get("/api/user-management/profile",
                                headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert profile.json()["id"] == str(user.id)
    wait_for(lambda: len(login_history(db, method="google", success=True)) == 2, timeout=30,
             message="two Google sign-ins in login_history")
    logs.assert_absent(parse_qs(urlsplit(callback).query)["code"][0], pair["refresh_token"])


def test_google_links_an_existing_account_with_the_verified_email(google_client, oidc, db):
    existing = make_user(db, email="ada@example.com")
    response = google_client.get(_consent(oidc, _start(google_client)))
    assert response.status_code == 200
    assert db.scalars(select(AuthIdentity)).one().user_id == existing.id


def test_unverified_google_email_does_not_take_over_an_existing_account(google_client, oidc, db):
    make_user(db, email="ada@example.com")
    oidc.next_claims = {"email_verified": False}
    response = google_client.get(_consent(oidc, _start(google_client)))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "email_taken"
    assert db.scalars(select(AuthIdentity)).all() == []


@pytest.mark.parametrize(
    "tamper",
    [
        {"other_key": True},
        {"iss": "https://evil.example.com"},
        {"aud": "another-client"},
        {"exp_in": -60},
        {"nonce": "not-the-nonce"},
        {"alg": "HS256"},
    ],
    ids=["other-key", "issuer", "audience", "expired", "nonce", "hs256"],
)
def test_tampered_id_tokens_are_refused_and_nothing_is_created(google_client, oidc, db, tamper):
    oidc.tamper = tamper
    response = google_client.get(_consent(oidc, _start(google_client)))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_id_token"
    assert db.scalars(select(User)).all() == []


def test_callback_needs_the_state_cookie_and_state_is_single_use(google_client, oidc, db):
    callback = _consent(oidc, _start(google_client))
    cookies = dict(google_client.cookies)
    google_client.cookies.clear()
    no_cookie = google_client.get(callback)
    assert no_cookie.status_code == 400
    assert no_cookie.json()["error"]["code"] == "oauth_state_mismatch"

    for name, value in cookies.items():
        google_client.cookies.set(name, value, path="/api/auth/oauth/google")
    assert google_client.get(callback).status_code == 200
    for name, value in cookies.items():
        google_client.cookies.set(name, value, path="/api/auth/oauth/google")
    replay = google_client.get(callback)
    assert replay.status_code == 400
    assert replay.json()["error"]["code"] == "oauth_state_expired"


def test_callback_errors_are_clear_4xx(google_client, oidc, db):
    cancelled = google_client.get("/api/auth/oauth/google/callback?error=access_denied")
    assert cancelled.status_code == 401 and cancelled.json()["error"]["code"] == "oauth_denied"
    missing = google_client.get("/api/auth/oauth/google/callback")
    assert missing.status_code == 400
    huge = google_client.get("/api/auth/oauth/google/callback?code=" + "a" * 5000 + "&state=x")
    assert huge.status_code == 422
    assert db.scalars(select(User)).all() == []


def test_google_not_configured_is_a_clear_404(client):
    response = client.get("/api/auth/oauth/google/authorize", follow_redirects=False)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "google_not_configured"
