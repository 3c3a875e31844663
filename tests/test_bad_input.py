"""The bad-input corpus: hostile tokens, webhook deliveries and request bodies.

Every case gets a clear 4xx in the contract's error shape, changes nothing in the database
(each test fingerprints the tables before and after), and leaves no secret in the logs.
Cases other test files already pin are not repeated here: alg none, a foreign key, expired,
wrong issuer/audience, a broken payload and a deactivated user's token
(tests/test_auth_tokens.py); bad signature, stale timestamp, missing header and signed
non-JSON webhooks (tests/test_stripe_webhook.py); zero/negative/fractional/string spends
(tests/test_credits_api.py); the echo route's 413s (tests/test_api_skeleton.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import select
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select as sql_select
from sqlalchemy import text

from db.models import Payment, StripeEvent, User
from services.credits.ledger import MAX_CREDITS
from tests.conftest import TEST_JWT_SECRET, TEST_STRIPE_KEY, TEST_WEBHOOK_SECRET
from tests.factories import auth_headers, make_payment, make_user
from tests.stripe_events import WEBHOOK_PATH, deliver, event, new_id, signature, stripe_object
from tests.support import wait_for

API = "/api/user-management"
SPEND = f"{API}/credits/use"
PROFILE = f"{API}/profile"
ADMIN = f"{API}/admin"
SECRETS = (TEST_JWT_SECRET, TEST_STRIPE_KEY, TEST_WEBHOOK_SECRET)
# Written asynchronously (Redis stream -> worker), and refused sign-ins are meant to be there.
_ASYNC_TABLES = {"login_history", "api_usage_log"}


def fingerprint(db) -> dict[str, tuple[int, str]]:
    """Row count and a digest of the contents of every table the API writes synchronously."""
    db.rollback()
    tables = db.scalars(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'alembic_version' ORDER BY tablename")).all()
    return {
        table: tuple(db.execute(text(
            f'SELECT count(*), md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) '
            f'FROM "{table}" t')).one())
        for table in tables if table not in _ASYNC_TABLES
    }


def assert_refused(response, status: int | set[int], code: str | set[str] | None = None) -> None:
    """A 4xx in the contract's shape: {"error": {"code", "message"}} and nothing else."""
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] in ({code} if isinstance(code, str) else code), body


@pytest.fixture
def people(db):
    """A user with credits and an admin, committed."""
    user = make_user(db, credits=100, username="victim", full_name="Victim", bio="before")
    admin = make_user(db, role="admin")
    return user, admin


# --- JWT attacks -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT assembled by hand (PyJWT refuses to make the dangerous ones)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{_b64(mac)}"


def _claims(user: User, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": str(user.id), "role": user.role, "iat": now, "nbf": now, "exp": now + 600,
              "jti": uuid.uuid4().hex, "iss": "billing", "aud": "billing-api", "typ": "access"}
    claims.update(changes)
    return claims


def _attacker_rsa() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def _tokens(user: User) -> dict[str, str]:
    private, public = _attacker_rsa()
    hour = int(time.time()) + 3600
    genuine = jwt.encode(_claims(user), TEST_JWT_SECRET, algorithm="HS256")
    header, _, sig = genuine.split(".")
    escalated = _b64(json.dumps(_claims(user, role="admin")).encode())
    return {
        # HS/RS confusion: a verifier that takes the key's type from the token would use the
        # public key as an HMAC secret.
        "hs256 signed with a public key": _forge({"alg": "HS256", "typ": "JWT"}, _claims(user),
                                                 public),
        "rs256 by an outside key": jwt.encode(_claims(user), private, algorithm="RS256"),
        "rs256 with its key embedded (jwk)": jwt.encode(
            _claims(user), private, algorithm="RS256",
            headers={"jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(
                serialization.load_pem_public_key(public)))}),
        "alg None spelt otherwise": _forge({"alg": "None", "typ": "JWT"}, _claims(user), None),
        "hs512 with the real secret": jwt.encode(_claims(user), TEST_JWT_SECRET,
                                                 algorithm="HS512"),
        "not yet valid (nbf)": jwt.encode(_claims(user, nbf=hour), TEST_JWT_SECRET,
                                          algorithm="HS256"),
        "issued in the future (iat)": jwt.encode(_claims(user, iat=hour, nbf=None),
                                                 TEST_JWT_SECRET, algorithm="HS256"),
        "role raised in the payload": f"{header}.{escalated}.{sig}",
        "refresh-typed token": jwt.encode(_claims(user, typ="refresh"), TEST_JWT_SECRET,
                                          algorithm="HS256"),
        "subject not a uuid": jwt.encode(_claims(user, sub="1 OR 1=1"), TEST_JWT_SECRET,
                                         algorithm="HS256"),
        # Signed with our key (a leaked or buggy issuer): still a 401, never a 500.
        "expiry beyond the calendar": jwt.encode(_claims(user, exp=2**70), TEST_JWT_SECRET,
                                                 algorithm="HS256"),
    }


def _drop_none(token_claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in token_claims.items() if v is not None}


def test_forged_and_untimely_tokens_are_refused_and_spend_nothing(client, db, people, logs):
    user, _ = people
    tokens = _tokens(user)
    before = fingerprint(db)
    for name, token in tokens.items():
        headers = {"Authorization": f"Bearer {token}"}
        spend = client.post(SPEND, json={"credits": 1}, headers=headers)
        assert spend.status_code == 401, (name, spend.text)
        assert_refused(spend, 401, {"invalid_token", "token_expired"})
        escalate = client.get(f"{ADMIN}/users", headers=headers)
        assert escalate.status_code == 401, (name, escalate.text)
    assert fingerprint(db) == before
    logs.assert_absent(*SECRETS, *tokens.values())


# --- webhook attacks -------------------------------------------------------------------------


def _customer_event() -> dict[str, Any]:
    return event("customer.created", stripe_object("customer"))


def _stored_events(db) -> int:
    db.expire_all()
    return len(db.scalars(sql_select(StripeEvent.id)).all())


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("future_timestamp", 400, "signature_future"),
        ("text_plain", 415, "unsupported_media_type"),
        ("form_encoded", 415, "unsupported_media_type"),
        ("deeply_nested_signed", 400, "malformed_event"),
        ("unsigned_non_json", 400, {"signature_invalid", "malformed_event"}),
        ("signed_with_stripe_api_key", 400, "signature_invalid"),
    ],
)
def test_hostile_webhook_deliveries_are_refused_and_store_nothing(client, db, logs, case,
                                                                  status, code):
    body = json.dumps(_customer_event()).encode()
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body)}
    if case == "future_timestamp":
        headers["Stripe-Signature"] = signature(body, timestamp=int(time.time()) + 3600)
    elif case == "text_plain":
        headers["Content-Type"] = "text/plain"
    elif case == "form_encoded":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif case == "deeply_nested_signed":
        body = b"[" * 100_000 + b"]" * 100_000
        headers["Stripe-Signature"] = signature(body)
    elif case == "unsigned_non_json":
        body = b"\x00\xff<xml/>"
        headers["Stripe-Signature"] = f"t={int(time.time())},v1={'0' * 64}"
    elif case == "signed_with_stripe_api_key":
        headers["Stripe-Signature"] = signature(body, secret=TEST_STRIPE_KEY)
    before = fingerprint(db)

    response = client.post(WEBHOOK_PATH, content=body, headers=headers)

    assert_refused(response, status, code)
    assert fingerprint(db) == before
    logs.assert_absent(*SECRETS)


def test_signature_header_with_odd_items_is_read_as_stripe_reads_it(live_api, db, logs):
    """Items the SDK skips (' t=²': not exactly 't') are skipped here too: no 500.

    Over a real socket: the test client's transport does not carry the raw byte."""
    evt = _customer_event()
    body = json.dumps(evt).encode()
    headers = {"Content-Type": "application/json",
               "Stripe-Signature": b"v0=x, t=\xb2," + signature(body).encode()}

    response = httpx.post(f"{live_api}{WEBHOOK_PATH}", content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert db.get(StripeEvent, evt["id"]) is not None
    logs.assert_absent(*SECRETS)


def test_replayed_processed_event_grants_nothing_more(client, db, celery_worker, logs):
    user = make_user(db)
    payment = make_payment(db, user)
    intent = stripe_object("payment_intent", id=payment.stripe_payment_intent_id,
                           amount=payment.amount_cents, amount_received=payment.amount_cents,
                           currency=payment.currency.lower(), status="succeeded",
                           latest_charge=payment.stripe_charge_id,
                           metadata={"payment_id": str(payment.id), "user_id": str(user.id),
                                     "package_id": payment.package_id})
    evt = event("payment_intent.succeeded", intent, event_id=new_id("evt"))
    assert deliver(client, evt).status_code == 200

    def processed() -> bool:
        db.expire_all()
        return db.get(StripeEvent, evt["id"]).status == "processed"

    wait_for(processed, timeout=60, message="the event processed by the worker")
    db.expire_all()
    granted = db.get(User, user.id).credit_balance
    assert granted == payment.credits
    before = fingerprint(db)

    # The same event again: freshly signed (an attacker with a captured delivery) and
    # byte for byte with its original signature.
    body = json.dumps(evt).encode()
    stamp = signature(body)
    for _ in range(2):
        again = client.post(WEBHOOK_PATH, content=body,
                            headers={"Content-Type": "application/json", "Stripe-Signature": stamp})
        assert again.status_code == 200 and again.json()["duplicate"] is True
    assert deliver(client, evt).json()["duplicate"] is True

    assert fingerprint(db) == before
    db.expire_all()
    assert db.get(User, user.id).credit_balance == granted
    assert db.get(Payment, payment.id).status == "succeeded"
    logs.assert_absent(*SECRETS)


# --- bodies refused before they are read -------------------------------------------------------


def _exchange(base_url: str, head: bytes, first: bytes) -> int:
    """Send ``head`` and ``first`` and nothing more; the status the server answers with.

    The rest of the declared body is never sent, so an answer proves the server decided
    without reading it.
    """
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head + first)
        readable, _, _ = select.select([sock], [], [], 60)
        assert readable, "no answer while the body was withheld"
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_ten_megabyte_bodies_get_413_before_they_are_read(live_api, db, people, settings, logs):
    user, _ = people
    ten_mb = 10 * 1024 * 1024
    before = fingerprint(db)
    declared = {"Content-Type": "application/json", "Content-Length": str(ten_mb)}
    # Declared too big: refused on the header alone, no body byte sent.
    assert _exchange(live_api, _head(WEBHOOK_PATH, {**declared, "Stripe-Signature": "t=1,v1=0"}),
                     b"") == 413
    assert _exchange(live_api, _head(SPEND, {**declared, **auth_headers(user)}), b"") == 413
    # Chunked (no length): read only up to the limit; the remaining 8 MB are never sent.
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    over = b"".join(_chunk(b" " * 65536) for _ in range(settings.max_body_bytes // 65536 + 2))
    assert _exchange(live_api, _head(WEBHOOK_PATH, {**chunked, "Stripe-Signature": "t=1,v1=0"}),
                     over) == 413
    assert _exchange(live_api, _head(SPEND, {**chunked, **auth_headers(user)}), over) == 413
    assert fingerprint(db) == before
    logs.assert_absent(*SECRETS)


# --- request attacks -------------------------------------------------------------------------

DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
Case = tuple[str, str, Callable[[User], dict[str, Any]], int | set[int]]


def _raw(body: bytes) -> Callable[[User], dict[str, Any]]:
    return lambda target: {"content": body, "headers": {"Content-Type": "application/json"}}


def _json(body: Any) -> Callable[[User], dict[str, Any]]:
    return lambda target: {"json": body}


def _cursor(item_id: Any) -> str:
    raw = json.dumps(["2024-01-01T00:00:00+00:00", item_id]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


REQUEST_CASES: dict[str, Case] = {
    # Deep nesting: the JSON parser's recursion limit must end as a 400, not a 500.
    "nested arrays spend": ("POST", SPEND, _raw(DEEP_ARRAYS), {400, 422}),
    "nested objects profile": ("PUT", PROFILE, _raw(DEEP_OBJECTS), {400, 422}),
    "nested arrays adjust": ("POST", "{user}/credits", _raw(DEEP_ARRAYS), {400, 422}),
    # Invalid UTF-8, lone surrogates and NUL characters in text fields.
    "invalid utf-8 spend": ("POST", SPEND, _raw(b'{"credits": 1, "description": "\xff\xfe"}'),
                            {400, 422}),
    "invalid utf-8 profile": ("PUT", PROFILE, _raw(b'{"full_name": "\xc3\x28"}'), {400, 422}),
    "lone surrogate profile": ("PUT", PROFILE, _raw(b'{"full_name": "a\\ud800b"}'), {400, 422}),
    "nul in profile": ("PUT", PROFILE, _json({"bio": "a\x00b"}), {400, 422}),
    "nul in spend": ("POST", SPEND, _json({"credits": 1, "description": "x\x00"}), {400, 422}),
    "lone surrogate spend": ("POST", SPEND, _raw(b'{"credits": 1, "description": "\\udc00"}'),
                             {400, 422}),
    "nul in adjust reason": ("POST", "{user}/credits", _json({"amount": 1, "reason": "ok\x00"}),
                             {400, 422}),
    # Header injection: CR/LF in fields that end up in mails, links and headers.
    "crlf in full name": ("PUT", PROFILE, _json({"full_name": "Ada\r\nBcc: all@example.com"}),
                          400),
    "crlf in avatar url": ("PUT", PROFILE,
                           _json({"avatar_url": "https://a.example/x\r\nSet-Cookie: s=1"}), 400),
    "crlf in username": ("PUT", PROFILE, _json({"username": "ada\r\nx"}), 400),
    "sql in username": ("PUT", PROFILE, _json({"username": "x'; DROP TABLE users; --"}), 400),
    "sql in email": ("PUT", PROFILE, _json({"email": "a@b.c' OR '1'='1"}), 400),
    # Integer overflow: 2^63 and 2^64 do not fit a BIGINT; nothing may wrap around.
    "spend 2^63": ("POST", SPEND, _json({"credits": 2**63}), 422),
    "spend 2^64": ("POST", SPEND, _json({"credits": 2**64}), 422),
    "adjust 2^63": ("POST", "{user}/credits", _json({"amount": 2**63, "reason": "overflow"}),
                    422),
    "adjust -2^64": ("POST", "{user}/credits", _json({"amount": -(2**64), "reason": "overflow"}),
                     422),
    "adjust above max": ("POST", "{user}/credits",
                         _json({"amount": MAX_CREDITS + 1, "reason": "overflow"}), 422),
    "price 2^64": ("POST", f"{ADMIN}/credit-packages",
                   _json({"id": "huge", "name": "Huge", "credits": 1, "price_cents": 2**64}), 422),
    "page size 2^64": ("GET", f"{ADMIN}/users?limit={2**64}", _json(None), 422),
    "report id 2^63": ("GET", f"{ADMIN}/reports/{2**63}", _json(None), {404, 422}),
    "report id -2^63-1": ("GET", f"{ADMIN}/reports/{-(2**63) - 1}", _json(None), {404, 422}),
    # Negative and fractional credits wherever credits are given.
    "adjust fractional": ("POST", "{user}/credits", _json({"amount": 1.5, "reason": "half"}),
                          422),
    "adjust as text": ("POST", "{user}/credits", _json({"amount": "10", "reason": "text"}), 422),
    "package negative credits": ("POST", f"{ADMIN}/credit-packages",
                                 _json({"id": "neg", "name": "Neg", "credits": -5,
                                        "price_cents": 100}), 422),
    "package fractional credits": ("POST", f"{ADMIN}/credit-packages",
                                   _json({"id": "half", "name": "Half", "credits": 0.5,
                                          "price_cents": 100}), 422),
    "plan negative credits": ("POST", f"{ADMIN}/plans",
                              _json({"slug": "neg", "name": "Neg", "monthly_credits": -1,
                                     "price_cents": 100}), 422),
    # Cursors are opaque, but a client can still hand-make one: any shape but ours is a 400.
    **{
        f"hand-made cursor {name}": ("GET", f"{ADMIN}/{name}?cursor={_cursor(item_id)}",
                                     _json(None), 400)
        for name, item_id in (("users", 123), ("payments", [1]), ("usage", {"a": 1}))
    },
    "hand-made cursor with a float id": ("GET", f"{API}/credits/transactions?cursor="
                                         f"{_cursor(1.5)}", _json(None), 400),
    "unbalanced ipv6 avatar url": ("PUT", PROFILE, _json({"avatar_url": "http://["}), 400),
    "bracketed avatar url": ("PUT", PROFILE, _json({"avatar_url": "https://a]b"}), 400),
    "crlf in the full name at sign-up": (
        "POST", "/api/auth/register",
        _json({"email": "crlf@example.com", "password": "Zz-very-long-pass-1",
               "full_name": "Ada\r\nBcc: all@example.com"}), 400),
    "spend negative zero": ("POST", SPEND, _raw(b'{"credits": -0.0}'), 422),
    "spend exponent": ("POST", SPEND, _raw(b'{"credits": 1e2}'), 422),
}


@pytest.mark.parametrize("name", list(REQUEST_CASES))
def test_hostile_request_is_a_clear_4xx_and_changes_nothing(client, db, people, logs, name):
    user, admin = people
    method, path, build, status = REQUEST_CASES[name]
    as_admin = path.startswith("{user}") or path.startswith(ADMIN)
    url = path.replace("{user}", f"{ADMIN}/users/{user.id}")
    kwargs = build(user)
    kwargs.setdefault("headers", {}).update(auth_headers(admin if as_admin else user))
    before = fingerprint(db)

    response = client.request(method, url, **{k: v for k, v in kwargs.items() if v is not None})

    assert_refused(response, status)
    assert fingerprint(db) == before
    logs.assert_absent(*SECRETS, kwargs["headers"]["Authorization"].split()[1])


SEARCH_ATTACKS = [
    "' OR '1'='1",
    "%' OR 1=1 --",
    "'; DROP TABLE users; --",
    "\") UNION SELECT password_hash FROM users --",
    "%",
    "_",
    "\\",
    "a\r\nX-Injected: 1",
    "\x00",
]


@pytest.mark.parametrize("q", SEARCH_ATTACKS, ids=range(len(SEARCH_ATTACKS)))
def test_injection_strings_in_user_search_match_nothing_and_change_nothing(
    client, db, people, logs, q
):
    _, admin = people
    before = fingerprint(db)
    response = client.get(f"{ADMIN}/users", params={"q": q}, headers=auth_headers(admin))
    if response.status_code == 200:
        # Taken as text: no user's email, name or username contains it.
        assert response.json()["items"] == [], q
    else:
        assert_refused(response, {400, 422})
    assert fingerprint(db) == before
    logs.assert_absent(*SECRETS)


def test_invalid_utf8_in_the_search_query_matches_nothing(client, db, people):
    _, admin = people
    before = fingerprint(db)
    response = client.get(f"{ADMIN}/users?q=%FF%FE%C3%28", headers=auth_headers(admin))
    assert response.status_code == 200 and response.json()["items"] == []
    assert fingerprint(db) == before


def test_sql_in_free_text_profile_fields_is_stored_as_text(client, db, people):
    user, _ = people
    name = "Robert'); DROP TABLE users; --"
    response = client.put(PROFILE, json={"full_name": name, "bio": "1' OR '1'='1"},
                          headers=auth_headers(user))
    assert response.status_code == 200, response.text
    db.expire_all()
    fresh = db.get(User, user.id)
    assert (fresh.full_name, fresh.bio) == (name, "1' OR '1'='1")
    assert db.scalar(text("SELECT count(*) FROM users")) == 2
