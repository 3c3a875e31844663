"""Credits over HTTP: balance, packages, spending, the ledger history and bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select

from db.base import utc_now
from db.models import ApiUsageLog, CreditTransaction, IdempotencyKey, Payment, User
from services.logs import logstream
from tests.factories import auth_headers, make_user
from tests.support import wait_for

API = "/api/user-management"


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return error


def _ledger_rows(db) -> int:
    return db.scalar(select(func.count()).select_from(CreditTransaction))


def test_balance_reports_balance_purchased_and_used(client, db):
    user = make_user(db, credits=40)
    client.post(f"{API}/credits/use", json={"credits": 15}, headers=auth_headers(user))
    assert client.get(f"{API}/credits", headers=auth_headers(user)).json() == {
        "balance": 25,
        "purchased": 0,
        "used": 15,
        "held": 0,
        "available": 25,
    }


def test_credits_routes_need_a_signed_in_user(client):
    _error(client.get(f"{API}/credits"), 401, "not_authenticated")
    _error(client.post(f"{API}/credits/use", json={"credits": 1}), 401, "not_authenticated")


def test_packages_are_public_and_list_only_active_ones_in_order(client, db):
    listed = client.get(f"{API}/credit-packages").json()
    assert [p["id"] for p in listed] == ["starter", "pro", "enterprise"]
    assert listed[0] == {
        "id": "starter", "name": "Starter", "credits": 100, "price_cents": 1500, "currency": "USD"
    }


def test_spend_returns_balance_and_transaction_and_hands_off_usage(client, db, settings):
    user = make_user(db, credits=10)
    response = client.post(
        f"{API}/credits/use",
        json={"credits": 3, "description": "image render", "endpoint": "/v1/render"},
        headers=auth_headers(user),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["balance"] == 7
    entry = db.get(CreditTransaction, body["transaction_id"])
    assert (entry.amount, entry.kind, entry.balance_after) == (-3, "usage", 7)
    assert (entry.description, entry.endpoint) == ("image render", "/v1/render")
    # The usage record was handed off once the spend committed: it sits in the log stream, or a
    # log worker (if one runs in this session) has already written it to api_usage_log.
    stream = redis.Redis.from_url(settings.redis_url)

    def handed_off() -> bool:
        queued = [r for _, r in stream.xrange(logstream.USAGE_STREAM)]
        written = db.scalar(select(func.count()).select_from(ApiUsageLog).where(
            ApiUsageLog.transaction_id == body["transaction_id"]))
        return written == 1 or any(str(body["transaction_id"]).encode() in r[b"r"]
                                   for r in queued)

    wait_for(handed_off, timeout=30, message="usage record hand-off")


def test_spend_beyond_balance_is_402_with_balance_and_changes_nothing(client, db):
    user = make_user(db, credits=5)
    error = _error(
        client.post(f"{API}/credits/use", json={"credits": 6}, headers=auth_headers(user)),
        402,
        "insufficient_credits",
    )
    assert error["balance"] == 5
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 5
    assert _ledger_rows(db) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"credits": 0},
        {"credits": -1},
        {"credits": 1.5},
        {"credits": 2.0},
        {"credits": "3"},
        {"credits": 2**31},
        {"credits": True},
        {},
        {"credits": 1, "description": "x" * 501},
        {"credits": 1, "endpoint": ""},
        {"credits": 1, "endpoint": "e" * 256},
        {"credits": 1, "bonus": 100},
        [1],
    ],
    ids=[
        "zero", "negative", "fractional", "float", "string", "above-int32", "bool", "missing",
        "huge-description", "empty-endpoint", "long-endpoint", "unknown-field", "not-an-object",
    ],
)
def test_bad_spend_input_is_422_and_changes_nothing(client, db, body):
    user = make_user(db, credits=50)
    response = client.post(f"{API}/credits/use", json=body, headers=auth_headers(user))
    _error(response, 422, "validation_error")
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 50
    assert _ledger_rows(db) == 1


def test_largest_allowed_spend_is_accepted_when_affordable(client, db):
    user = make_user(db, credits=2**31 - 1)
    response = client.post(
        f"{API}/credits/use", json={"credits": 2**31 - 1}, headers=auth_headers(user)
    )
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == 0


def test_oversized_body_is_413_and_changes_nothing(client, db, settings):
    user = make_user(db, credits=50)
    huge = {"credits": 1, "description": "x" * (settings.max_body_bytes + 10)}
    _error(client.post(f"{API}/credits/use", json=huge, headers=auth_headers(user)), 413,
           "payload_too_large")
    assert _ledger_rows(db) == 1


def test_transactions_page_newest_first_with_cursor(client, db):
    user = make_user(db, credits=100)
    headers = auth_headers(user)
    for n in range(1, 6):
        assert client.post(f"{API}/credits/use", json={"credits": n}, headers=headers).is_success
    first = client.get(f"{API}/credits/transactions", params={"limit": 4}, headers=headers).json()
    assert [t["amount"] for t in first["items"]] == [-5, -4, -3, -2]
    assert first["next_cursor"]
    second = client.get(
        f"{API}/credits/transactions",
        params={"limit": 4, "cursor": first["next_cursor"]},
        headers=headers,
    ).json()
    assert [t["amount"] for t in second["items"]] == [-1, 100]
    assert second["next_cursor"] is None
    assert second["items"][1]["kind"] == "bonus"


def test_transactions_filter_by_kind_and_time_range(client, db):
    user = make_user(db, credits=100)
    other = make_user(db, credits=7)
    headers = auth_headers(user)
    client.post(f"{API}/credits/use", json={"credits": 1}, headers=headers)
    usage = client.get(
        f"{API}/credits/transactions", params={"kind": "usage"}, headers=headers
    ).json()["items"]
    assert [(t["kind"], t["amount"]) for t in usage] == [("usage", -1)]
    now = utc_now()
    future = client.get(
        f"{API}/credits/transactions",
        params={"since": (now + timedelta(hours=1)).isoformat()},
        headers=headers,
    ).json()["items"]
    assert future == []
    window = client.get(
        f"{API}/credits/transactions",
        params={"since": (now - timedelta(hours=1)).isoformat(),
                "until": (now + timedelta(hours=1)).isoformat()},
        headers=headers,
    ).json()["items"]
    assert len(window) == 2  # only the user's own rows, never the other user's
    assert all(t["amount"] != 7 for t in window)
    assert other.id != user.id


@pytest.mark.parametrize(
    "params, code",
    [
        ({"kind": "gift"}, "validation_error"),
        ({"limit": 0}, "validation_error"),
        ({"limit": 201}, "validation_error"),
        ({"since": "2025-01-01T00:00:00"}, "validation_error"),  # naive time is ambiguous
        ({"cursor": "!!not-a-cursor"}, "invalid_cursor"),
    ],
)
def test_bad_transaction_queries_are_4xx(client, db, params, code):
    user = make_user(db)
    response = client.get(f"{API}/credits/transactions", params=params, headers=auth_headers(user))
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]["code"] == code


def test_payments_lists_only_own_payments_newest_first(client, db):
    user = make_user(db)
    other = make_user(db)
    for n, owner in enumerate([user, user, other, user]):
        db.add(Payment(user_id=owner.id, package_id="starter", flow="checkout",
                       amount_cents=1500 + n, currency="USD", credits=100))
        db.commit()
    headers = auth_headers(user)
    first = client.get(f"{API}/payments", params={"limit": 2}, headers=headers).json()
    assert [p["amount_cents"] for p in first["items"]] == [1503, 1501]
    assert first["items"][0]["status"] == "pending"
    assert first["items"][0]["package_id"] == "starter"
    rest = client.get(
        f"{API}/payments", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers
    ).json()
    assert [p["amount_cents"] for p in rest["items"]] == [1500]
    assert rest["next_cursor"] is None


def test_payment_cursor_that_is_not_ours_is_400(client, db):
    user = make_user(db)
    _error(client.get(f"{API}/payments", params={"cursor": "Zm9v"}, headers=auth_headers(user)),
           400, "invalid_cursor")


def test_no_usage_log_or_key_rows_are_written_by_a_refused_spend(client, db):
    user = make_user(db, credits=1)
    headers = {**auth_headers(user), "Idempotency-Key": "refused-1"}
    _error(client.post(f"{API}/credits/use", json={"credits": 2}, headers=headers), 402,
           "insufficient_credits")
    assert db.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    assert db.scalar(select(func.count()).select_from(ApiUsageLog)) == 0
