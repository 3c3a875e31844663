"""Idempotency-Key: a retry returns the first answer; the work happens once, even under races."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, update

from db.base import utc_now
from db.models import CreditTransaction, IdempotencyKey, User
from tests.factories import auth_headers, make_user
from tests.support import wait_for

API = "/api/user-management"
USE = f"{API}/credits/use"


def _usage_rows(db, user_id) -> int:
    return db.scalar(
        select(func.count()).select_from(CreditTransaction).where(
            CreditTransaction.user_id == user_id, CreditTransaction.kind == "usage"
        )
    )


def _keyed(user, key: str) -> dict[str, str]:
    return {**auth_headers(user), "Idempotency-Key": key}


def test_retry_with_same_key_and_body_replays_first_answer_without_spending_again(client, db):
    user = make_user(db, credits=10)
    headers = _keyed(user, "spend-1")
    body = {"credits": 4, "description": "render", "endpoint": "/v1/render"}
    first = client.post(USE, json=body, headers=headers)
    again = client.post(USE, json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() == {"balance": 6, "transaction_id": first.json()[
        "transaction_id"]}
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 6
    assert _usage_rows(db, user.id) == 1


def test_replay_is_independent_of_json_key_order_and_spacing(client, db):
    user = make_user(db, credits=10)
    headers = {**_keyed(user, "order"), "content-type": "application/json"}
    first = client.post(USE, content=b'{"credits": 2, "endpoint": "/e"}', headers=headers)
    again = client.post(USE, content=b'{"endpoint":"/e","credits":2}', headers=headers)
    assert again.json() == first.json()
    assert _usage_rows(db, user.id) == 1


def test_same_key_with_different_body_is_409_and_spends_nothing_more(client, db):
    user = make_user(db, credits=10)
    headers = _keyed(user, "spend-2")
    assert client.post(USE, json={"credits": 1}, headers=headers).status_code == 200
    response = client.post(USE, json={"credits": 2}, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 9


def test_keys_are_scoped_per_user_and_per_route(client, db):
    alice, bob = make_user(db, credits=5), make_user(db, credits=5)
    assert client.post(USE, json={"credits": 1}, headers=_keyed(alice, "k")).status_code == 200
    assert client.post(USE, json={"credits": 1}, headers=_keyed(bob, "k")).status_code == 200
    buy = client.post(
        f"{API}/credits/purchase",
        json={"package_id": "starter", "flow": "payment_intent"},
        headers=_keyed(alice, "k"),
    )
    assert buy.status_code == 201, buy.text
    db.expire_all()
    assert [db.get(User, u.id).credit_balance for u in (alice, bob)] == [4, 4]


def test_a_refused_request_stores_no_key_so_a_retry_runs_again(client, db):
    user = make_user(db, credits=1)
    headers = _keyed(user, "top-up-first")
    assert client.post(USE, json={"credits": 3}, headers=headers).status_code == 402
    from services.credits import ledger

    ledger.post(db, user_id=user.id, amount=5, kind="bonus")
    db.commit()
    retry = client.post(USE, json={"credits": 3}, headers=headers)
    assert retry.status_code == 200
    assert retry.json()["balance"] == 3


ADJUST = f"{API}/admin/users/{{user_id}}/credits"


def _adjust(client, admin, user, key: str):
    return client.post(ADJUST.format(user_id=user.id), json={"amount": 1, "reason": "goodwill"},
                       headers=_keyed(admin, key))


def test_expired_key_is_reclaimed_and_runs_again(client, db):
    admin, user = make_user(db, role="admin"), make_user(db)
    assert _adjust(client, admin, user, "old").status_code == 200
    db.execute(update(IdempotencyKey).values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()
    again = _adjust(client, admin, user, "old")
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert again.json()["balance_after"] == 2
    (row,) = db.scalars(select(IdempotencyKey)).all()
    db.refresh(row)
    assert row.expires_at > utc_now() + timedelta(hours=23)


def test_keys_are_kept_for_at_least_a_day(client, db):
    admin, user = make_user(db, role="admin"), make_user(db)
    _adjust(client, admin, user, "kept")
    row = db.scalars(select(IdempotencyKey)).one()
    assert row.expires_at - row.created_at >= timedelta(hours=24) - timedelta(seconds=5)
    assert row.state == "completed" and row.response_status == 200


def test_a_spends_key_is_kept_with_its_ledger_entry(client, db):
    """The spend and its key are one ledger row: no key row to expire, the replay lasts."""
    user = make_user(db, credits=10)
    first = client.post(USE, json={"credits": 3}, headers=_keyed(user, "with-the-entry"))
    assert db.scalar(select(func.count()).select_from(IdempotencyKey)) == 0
    entry = db.get(CreditTransaction, first.json()["transaction_id"])
    assert entry.dedupe_key is not None and "with-the-entry" not in entry.dedupe_key
    again = client.post(USE, json={"credits": 3}, headers=_keyed(user, "with-the-entry"))
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()


@pytest.mark.parametrize("key", ["x" * 256, "has space", "ключ"])
def test_malformed_key_is_400_and_spends_nothing(client, db, key):
    user = make_user(db, credits=10)
    headers = {**auth_headers(user), "Idempotency-Key": key}
    try:
        response = client.post(USE, json={"credits": 1}, headers=headers)
    except UnicodeEncodeError:  # httpx refuses non-latin-1 headers itself: nothing was sent
        return
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10


def test_concurrent_requests_with_one_key_do_the_work_once(live_api, db):
    user = make_user(db, credits=50)
    key = f"race-{uuid.uuid4()}"
    headers = _keyed(user, key)
    n = 12
    barrier = threading.Barrier(n)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_api, timeout=60) as http:
            http.get("/healthz")  # connected before the race starts
            barrier.wait()
            return http.post(USE, json={"credits": 5, "endpoint": "/race"}, headers=headers)

    with ThreadPoolExecutor(max_workers=n) as pool:
        responses = list(pool.map(send, range(n)))
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1  # every caller got the one first answer
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 45
    assert _usage_rows(db, user.id) == 1


def test_concurrent_retries_of_a_purchase_make_one_payment(live_api, db):
    from db.models import Payment

    user = make_user(db)
    headers = _keyed(user, "buy-race")
    n = 6
    barrier = threading.Barrier(n)

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_api, timeout=60) as http:
            http.get("/healthz")
            barrier.wait()
            return http.post(
                f"{API}/credits/purchase",
                json={"package_id": "starter", "flow": "payment_intent"},
                headers=headers,
            )

    with ThreadPoolExecutor(max_workers=n) as pool:
        responses = list(pool.map(send, range(n)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["payment_id"] for r in responses}) == 1
    assert db.scalar(select(func.count()).select_from(Payment)) == 1


def test_expired_keys_are_purged_by_the_scheduled_task_and_live_ones_kept(
    db, settings, celery_worker
):
    from workers.app import app
    from workers.schedule import beat_schedule

    task = "maintenance.purge_idempotency_keys"
    assert [e["task"] for e in beat_schedule(settings).values()].count(task) == 1
    user, other = make_user(db), make_user(db)
    now = utc_now()

    def key(owner, name: str, expires_in: timedelta) -> IdempotencyKey:
        return IdempotencyKey(user_id=owner.id, scope="POST /x", key=name, request_hash=b"h" * 32,
                              state="completed", response_status=200, response_body={},
                              expires_at=now + expires_in)

    db.add_all([key(user, "old-1", timedelta(minutes=-1)), key(other, "old-2", timedelta(days=-3)),
                key(user, "live", timedelta(minutes=5)), key(other, "fresh", timedelta(hours=24))])
    db.commit()

    app.send_task(task)  # what beat sends, through the real broker to the real worker

    def remaining() -> set[str]:
        db.expire_all()
        return set(db.scalars(select(IdempotencyKey.key)))

    wait_for(lambda: remaining() == {"live", "fresh"}, timeout=20, message="the expired keys gone")
