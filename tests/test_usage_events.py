"""POST /usage/events: batches of metered events, each applied at most once per (user, id)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, text

from db import rls
from db.base import utc_now
from db.models import ApiUsageLog, BalanceCrossing, CreditGrant, CreditHold, CreditTransaction, User
from db.transaction import transaction
from services.credits import integrity, ledger
from tests.factories import auth_headers, make_user
from tests.support import wait_for

API = "/api/user-management"


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def _server_key(client, db) -> dict[str, str]:
    admin = make_user(db, role="admin")
    made = client.post(f"{API}/api-keys", json={"name": "meter", "scopes": ["events:write"],
                                                 "server": True}, headers=auth_headers(admin))
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['secret']}"}


def _usage_logged(db, user_id) -> int:
    db.rollback()  # a fresh snapshot: the worker commits the rows
    return db.scalar(select(func.count()).select_from(ApiUsageLog)
                     .where(ApiUsageLog.user_id == user_id))


def _ledger_rows(db) -> int:
    return db.scalar(select(func.count()).select_from(CreditTransaction))


def test_a_batch_answers_each_event_and_a_retry_finds_the_first_transactions(
    client, db, settings, celery_worker
):
    user = make_user(db, credits=10)
    headers = auth_headers(user)
    events = [
        {"id": "call-1", "credits": 4, "endpoint": "/v1/chat", "description": "chat"},
        {"id": "call-2", "credits": 7},  # only 6 left
        {"id": "call-3", "credits": 6, "timestamp": "2026-12-06T06:00:00Z"},
        {"id": "call-4", "credits": 1, "user_id": str(uuid.uuid4())},  # not a user key's to name
    ]
    first = client.post(f"{API}/usage/events", json={"events": events}, headers=headers)
    assert first.status_code == 200, first.text
    results = first.json()["results"]
    assert [(r["id"], r["status"], r["balance"]) for r in results] == [
        ("call-1", "applied", 6), ("call-2", "insufficient_credits", 6),
        ("call-3", "applied", 0), ("call-4", "invalid", None)]
    entry = db.get(CreditTransaction, results[0]["transaction_id"])
    assert (entry.kind, entry.amount, entry.endpoint, entry.reference_id) == (
        "usage", -4, "/v1/chat", "call-1")
    # The applied ones go through the log pipeline (the worker drains it) to the usage log.
    wait_for(lambda: _usage_logged(db, user.id) == 2, message="usage log")
    again = client.post(f"{API}/usage/events", json={"events": events}, headers=headers).json()
    assert [(r["status"], r["transaction_id"]) for r in again["results"]] == [
        ("duplicate", results[0]["transaction_id"]), ("insufficient_credits", None),
        ("duplicate", results[2]["transaction_id"]), ("invalid", None)]
    db.expire_all()
    stored = db.get(User, user.id)
    assert (stored.credit_balance, stored.credits_used, _ledger_rows(db)) == (0, 10, 3)


def test_a_server_key_meters_for_many_users_and_unknown_ones_are_invalid(client, db):
    alice, bob = make_user(db, credits=5), make_user(db, credits=5)
    gone = make_user(db, credits=5, active=False)
    headers = _server_key(client, db)
    events = [
        {"id": "1", "user_id": str(alice.id), "credits": 2},
        {"id": "1", "user_id": str(bob.id), "credits": 3},  # same id, another user: its own
        {"id": "2", "user_id": str(uuid.uuid4()), "credits": 1},
        {"id": "3", "user_id": str(gone.id), "credits": 1},
        {"id": "4", "credits": 1},  # a server key's event must name its user
        {"id": "5", "user_id": str(alice.id), "credits": 3},
    ]
    answer = client.post(f"{API}/usage/events", json={"events": events}, headers=headers)
    assert [r["status"] for r in answer.json()["results"]] == [
        "applied", "applied", "invalid", "invalid", "invalid", "applied"]
    db.expire_all()
    assert [db.get(User, u.id).credit_balance for u in (alice, bob, gone)] == [0, 2, 5]


def test_held_credits_are_not_available_to_events_until_their_hold_is_due(client, db):
    user = make_user(db, credits=10)
    headers = auth_headers(user)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 8},
                          headers=headers).json()["hold_id"]
    results = client.post(f"{API}/usage/events", headers=headers, json={"events": [
        {"id": "a", "credits": 3}, {"id": "b", "credits": 2}]}).json()["results"]
    assert [r["status"] for r in results] == ["insufficient_credits", "applied"]
    db.execute(text("UPDATE credit_holds SET expires_at = now() - interval '1 second' "
                    "WHERE id = :id"), {"id": hold_id})
    db.commit()
    results = client.post(f"{API}/usage/events", headers=headers, json={"events": [
        {"id": "a", "credits": 3}]}).json()["results"]
    assert [(r["status"], r["balance"]) for r in results] == [("applied", 5)]
    db.expire_all()
    assert (db.get(User, user.id).held_credits, db.get(CreditHold, hold_id).status) == (
        0, "expired")


def _grant(db, user, amount: int, kind: str, *, expires_in: timedelta | None = None) -> int:
    entry = ledger.post(db, user_id=user.id, amount=amount, kind=kind,
                        expires_at=utc_now() + expires_in if expires_in else None)
    db.commit()
    assert entry is not None and entry.grant_id is not None
    return entry.grant_id


def test_a_batch_burns_grants_in_burn_down_order_and_keeps_balance_equal_to_grants(
    client, db, settings
):
    user = make_user(db)
    purchase = _grant(db, user, 50, "purchase")  # priority 30, never expires
    subscription = _grant(db, user, 30, "subscription_grant",
                          expires_in=timedelta(days=20))  # priority 20
    promo = _grant(db, user, 10, "promo", expires_in=timedelta(days=2))  # priority 10
    lapsed = _grant(db, user, 7, "bonus", expires_in=timedelta(days=1))
    db.execute(text("UPDATE credit_grants SET expires_at = now() - interval '1 second' "
                    "WHERE id = :id"), {"id": lapsed})  # its time passed; no sweep ran yet
    db.commit()
    results = client.post(f"{API}/usage/events", headers=auth_headers(user), json={"events": [
        {"id": "e1", "credits": 6}, {"id": "e2", "credits": 9}, {"id": "e3", "credits": 40},
        {"id": "e4", "credits": 50},
    ]}).json()["results"]
    # The lapsed grant's 7 leave first (97 -> 90); then promo, subscription, purchase.
    assert [(r["status"], r["balance"]) for r in results] == [
        ("applied", 84), ("applied", 75), ("applied", 35), ("insufficient_credits", 35)]
    taken = [[(m["grant_id"], m["credits"]) for m in db.get(CreditTransaction,
                                                             r["transaction_id"]).grants]
             for r in results[:3]]
    assert taken == [[(promo, -6)], [(promo, -4), (subscription, -5)],
                     [(subscription, -25), (purchase, -15)]]
    db.expire_all()
    assert [db.get(CreditGrant, g).remaining for g in (promo, subscription, purchase, lapsed)] \
        == [0, 0, 35, 0]
    assert db.scalar(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.user_id == user.id, CreditTransaction.kind == "expiry")) == 1
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        assert integrity.check_ledger(session).mismatches == []


def test_a_capture_and_a_batch_crossing_the_low_balance_alert_record_crossings(client, db):
    user = make_user(db, credits=100, low_balance_alert=50)
    headers = auth_headers(user)
    hold = client.post(f"{API}/credits/holds", json={"credits": 60}, headers=headers).json()
    captured = client.post(f"{API}/credits/holds/{hold['hold_id']}/capture",
                           json={"credits": 55}, headers=headers)
    assert captured.json()["balance"] == 45, captured.text  # 100 -> 45: below 50
    ledger.post(db, user_id=user.id, amount=55, kind="bonus", reference_type="test")
    db.commit()  # 100 again, above the alert
    results = client.post(f"{API}/usage/events", headers=headers, json={"events": [
        {"id": "a", "credits": 30}, {"id": "b", "credits": 25}, {"id": "c", "credits": 45},
    ]}).json()["results"]
    assert [r["balance"] for r in results] == [70, 45, 0]
    crossings = db.execute(select(BalanceCrossing.kind, BalanceCrossing.balance_before,
                                  BalanceCrossing.balance_after)
                           .where(BalanceCrossing.user_id == user.id)
                           .order_by(BalanceCrossing.id)).all()
    assert [tuple(c) for c in crossings] == [("low", 100, 45), ("low", 70, 45),
                                              ("depleted", 45, 0)]


@pytest.mark.parametrize("events, status, code", [
    ([], 422, "validation_error"),
    ([{"id": f"e{i}", "credits": 1} for i in range(1001)], 422, "validation_error"),
    ([{"id": "same", "credits": 1}, {"id": "same", "credits": 2}], 400, "duplicate_event_id"),
    ([{"id": "x", "credits": 0}], 422, "validation_error"),
    ([{"id": "", "credits": 1}], 422, "validation_error"),
    ([{"id": "x" * 256, "credits": 1}], 422, "validation_error"),
    ([{"id": "x", "credits": 1, "user_id": "nobody"}], 422, "validation_error"),
    ([{"id": "x", "credits": 1, "extra": True}], 422, "validation_error"),
    ([{"id": "x", "credits": 1, "timestamp": 0}], 422, "validation_error"),
    ([{"id": "x", "credits": 1, "timestamp": "2026-12-06T06:00:00"}], 422, "validation_error"),
])
def test_bad_batches_are_refused_whole_and_change_nothing(client, db, events, status, code):
    user = make_user(db, credits=10)
    before = _ledger_rows(db)
    _error(client.post(f"{API}/usage/events", json={"events": events},
                       headers=auth_headers(user)), status, code)
    assert _ledger_rows(db) == before


def test_a_two_megabyte_batch_is_refused(client, db):
    user = make_user(db, credits=10)
    events = [{"id": f"e{i}", "credits": 1, "description": "d" * 500} for i in range(4000)]
    _error(client.post(f"{API}/usage/events", json={"events": events},
                       headers=auth_headers(user)), 413, "payload_too_large")
    assert _ledger_rows(db) == 1


def test_a_batch_retried_three_times_at_once_applies_each_event_once(live_api, client, db):
    users = [make_user(db, credits=1000) for _ in range(10)]
    headers = _server_key(client, db)
    events = [{"id": f"ev-{i}", "user_id": str(users[i % 10].id), "credits": 1 + i % 5}
              for i in range(300)]
    barrier = threading.Barrier(3)

    def send(_: int) -> list[dict]:
        with httpx.Client(base_url=live_api, timeout=60) as http:
            barrier.wait()
            answer = http.post(f"{API}/usage/events", json={"events": events}, headers=headers)
            assert answer.status_code == 200, answer.text
            return answer.json()["results"]

    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(send, range(3)))
    for i in range(300):
        statuses = sorted(a[i]["status"] for a in answers)
        assert statuses == ["applied", "duplicate", "duplicate"], (i, statuses)
        assert len({a[i]["transaction_id"] for a in answers}) == 1
    db.expire_all()
    assert _ledger_rows(db) == 10 + 300
    for n, user in enumerate(users):
        expected = sum(1 + i % 5 for i in range(300) if i % 10 == n)
        stored = db.get(User, user.id)
        assert stored.credit_balance == 1000 - expected
        assert db.scalar(select(func.sum(CreditTransaction.amount)).where(
            CreditTransaction.user_id == user.id)) == stored.credit_balance
