"""GET|PUT /api/user-management/profile: validated fields, unique username, confirmed email change."""

from __future__ import annotations

from db.models import User
from tests.conftest_auth import token_of
from tests.factories import auth_headers, make_user, signed_in_headers
from tests.smtp import link_in

PROFILE = "/api/user-management/profile"


def _fresh(db, user) -> User:
    db.expire_all()
    return db.get(User, user.id)


def test_profile_fields_are_updated_and_read_back(client, db):
    user = make_user(db, email="pro@example.com")
    response = client.put(PROFILE, headers=auth_headers(user), json={
        "username": "Ada_L", "full_name": "  Ada Lovelace ", "bio": "Analyst.",
        "avatar_url": "https://cdn.example.com/a.png", "phone": "+44 20 7946 0958"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "ada_l" and body["full_name"] == "Ada Lovelace"
    # A new number is the account's only once the code texted to it comes back.
    assert body["phone"] is None and body["pending_phone"] == "+442079460958"
    assert client.get(PROFILE, headers=auth_headers(user)).json() == body
    # Only the fields sent change; null clears one.
    again = client.put(PROFILE, headers=auth_headers(user), json={"bio": None})
    assert again.json()["bio"] is None and again.json()["username"] == "ada_l"


def test_bad_profile_input_is_4xx_and_changes_nothing(client, db):
    user = make_user(db, email="strict@example.com", username="strict", bio="before")
    make_user(db, username="taken", phone="+14155550100")
    cases = [
        ({"username": "ab"}, 400, "invalid_username"),
        ({"username": "-dash"}, 400, "invalid_username"),
        ({"username": "x" * 40}, 422, "validation_error"),
        ({"username": "TAKEN"}, 409, "username_taken"),
        ({"phone": "12"}, 400, "invalid_phone"),
        ({"avatar_url": "javascript:alert(1)"}, 400, "invalid_avatar_url"),
        ({"bio": "b" * 2001}, 422, "validation_error"),
        ({"role": "admin"}, 422, "validation_error"),
        ({"email": "not-an-email"}, 400, "invalid_email"),
        ({"bio": "after", "username": "taken"}, 409, "username_taken"),
    ]
    for body, status, code in cases:
        response = client.put(PROFILE, headers=auth_headers(user), json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
    fresh = _fresh(db, user)
    assert (fresh.username, fresh.bio, fresh.phone, fresh.role) == ("strict", "before", None,
                                                                    "user")


def test_email_change_takes_effect_only_after_the_new_address_confirms(
    client, db, celery_worker, mailbox, logs
):
    user = make_user(db, email="old@example.com")
    headers = signed_in_headers(db, user)  # a fresh sign-in: the account has no password
    response = client.put(PROFILE, headers=headers, json={"email": "New@Example.com"})
    assert response.status_code == 200
    assert response.json()["email"] == "old@example.com"
    assert response.json()["pending_email"] == "new@example.com"

    mail = mailbox.wait_for("new@example.com")
    assert mail["Subject"] == "Confirm your new email address"
    token = token_of(link_in(mail))
    assert _fresh(db, user).email == "old@example.com"

    confirmed = client.post("/api/auth/confirm", json={"token": token})
    assert confirmed.status_code == 200 and confirmed.json()["email"] == "new@example.com"
    profile = client.get(PROFILE, headers=headers).json()  # the sign-in that asked stays
    assert profile["email"] == "new@example.com" and profile["pending_email"] is None
    assert profile["email_confirmed"] is True
    logs.assert_absent(token)


def test_profile_needs_a_signed_in_user(client):
    assert client.get(PROFILE).status_code == 401
    assert client.put(PROFILE, json={"bio": "x"}).status_code == 401
