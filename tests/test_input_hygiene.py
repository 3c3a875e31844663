"""What clients type: look-alike addresses are one account, and no error echoes input.

Issue 13, finding 7. Addresses are NFKC-normalised before validation, so full-width letters
are the letters themselves, and a part mixing scripts (a Cyrillic 'а' among Latin letters,
in Unicode or punycode) is refused. An error body never carries back what the client sent:
ids, slugs, codes, unknown field names, or the characters of an invalid address.
"""

from __future__ import annotations

import uuid

import pytest

from tests.factories import auth_headers, make_plan, make_user

API = "/api/user-management"
MARKER = "zq7Mark3r"
STRONG = "correct horse battery staple 42"


def test_a_full_width_address_is_the_same_account(client, db):
    make_user(db, email="ada@example.com")

    again = client.post("/api/auth/register",
                        json={"email": "ａｄａ@ｅｘａｍｐｌｅ．ｃｏｍ", "password": STRONG})

    assert again.status_code == 409 and again.json()["error"]["code"] == "email_taken"


@pytest.mark.parametrize("address", [
    "аda@example.com",            # Cyrillic 'а' among Latin letters
    "ada@exаmple.com",            # the same in the domain
    "ada@xn--exmple-4nf.com",     # that domain, as punycode
    "ada@ехample.com",            # Cyrillic 'е' and 'х'
])
def test_an_address_mixing_scripts_in_one_part_is_refused(client, db, address):
    refused = client.post("/api/auth/register", json={"email": address, "password": STRONG})

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_email"
    assert client.post("/api/auth/magic-link", json={"email": address}).status_code == 400


def test_one_script_per_part_is_a_valid_address(client, db):
    for address in ("иван@пример.рф", "ivan@пример.рф", "bücher@bücher.de"):
        made = client.post("/api/auth/register", json={"email": address, "password": STRONG})
        assert made.status_code == 201, (address, made.text)


def test_no_error_body_echoes_what_the_client_sent(client, db):
    user, admin = make_user(db), make_user(db, role="admin")
    plan = make_plan(db)
    mine, theirs = auth_headers(user), auth_headers(admin)
    unknown_user = str(uuid.uuid4())
    calls = [
        ("POST", f"{API}/credits/purchase", mine, {"package_id": f"{MARKER}' OR '1'='1"}),
        ("POST", f"{API}/subscription", mine, {"plan_id": f"{MARKER}' OR '1'='1"}),
        ("POST", f"{API}/credits/use", mine, {"credits": 1, MARKER: "x"}),
        ("PUT", f"{API}/profile", mine, {"email": f"{MARKER}<>@example.com"}),
        ("POST", "/api/auth/register", None, {"email": f"{MARKER}@@x", "password": STRONG}),
        ("POST", "/api/auth/login", None, {"email": "a@example.com", "password": "x",
                                             MARKER: 1}),
        ("GET", f"{API}/admin/users/{MARKER}", theirs, None),
        ("GET", f"{API}/admin/users/{unknown_user}", theirs, None),
        ("POST", f"{API}/admin/users/{unknown_user}/credits", theirs,
         {"amount": 5, "reason": "test"}),
        ("GET", f"{API}/admin/users/{unknown_user}/transactions", theirs, None),
        ("PATCH", f"{API}/admin/plans/{MARKER}", theirs, {"name": "x"}),
        ("POST", f"{API}/admin/plans", theirs, {"slug": plan.slug, "name": "Again",
                                                "monthly_credits": 1, "price_cents": 100}),
        ("PUT", f"{API}/admin/credit-packages/{MARKER}/price", theirs, {"price_cents": 100}),
        ("POST", f"{API}/admin/webhook-events/evt_{MARKER}/retry", theirs, None),
        ("GET", f"{API}/admin/webhook-events/evt_{MARKER}", theirs, None),
        ("GET", f"{API}/admin/reports/{MARKER}", theirs, None),
        ("GET", f"/admin/{MARKER}.js", None, None),
    ]
    for method, path, headers, body in calls:
        response = client.request(method, path, headers=headers, json=body)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert set(response.json()) == {"error"}, (path, response.text)
        for sent in (MARKER, unknown_user, plan.slug):
            assert sent not in response.text, (path, response.text)
