"""Holds: reserve, capture (partly or wholly), release, expire; available = balance - held."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, text

from db import rls
from db.base import utc_now
from db.models import CreditGrant, CreditHold, CreditTransaction, User
from db.transaction import transaction
from services.credits import holds, integrity, ledger
from tests.factories import auth_headers, make_user
from workers.schedule import beat_schedule

API = "/api/user-management"


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def _state(db, user_id) -> tuple[int, int, int]:
    """(balance, held, ledger sum) as stored."""
    db.expire_all()
    user = db.get(User, user_id)
    ledger_sum = db.scalar(select(func.coalesce(func.sum(CreditTransaction.amount), 0))
                           .where(CreditTransaction.user_id == user_id))
    return user.credit_balance, user.held_credits, ledger_sum


def _active_holds(db, user_id) -> int:
    return db.scalar(select(func.count()).select_from(CreditHold).where(
        CreditHold.user_id == user_id, CreditHold.status == "active"))


def _age(db, hold_id, seconds: float = 1.0) -> None:
    """Move a hold's expiry into the past, as time passing would."""
    db.execute(text("UPDATE credit_holds SET expires_at = now() - make_interval(secs => :s) "
                    "WHERE id = :id"), {"s": seconds, "id": hold_id})
    db.commit()


def test_a_hold_reserves_credits_that_spends_cannot_take(client, db):
    user = make_user(db, credits=100)
    headers = auth_headers(user)
    made = client.post(f"{API}/credits/holds", json={"credits": 60, "ttl_s": 600},
                       headers=headers)
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["credits"], body["balance"], body["available"]) == (60, 100, 40)
    error = _error(client.post(f"{API}/credits/use", json={"credits": 41}, headers=headers),
                   402, "insufficient_credits")
    assert (error["balance"], error["available"]) == (100, 40)
    assert client.post(f"{API}/credits/use", json={"credits": 40}, headers=headers).json()[
        "balance"] == 60
    shown = client.get(f"{API}/credits", headers=headers).json()
    # Held credits stay in their grant (a hold reserves, it burns nothing until captured).
    assert [g["remaining"] for g in shown.pop("grants")] == [60]
    assert shown == {"balance": 60, "purchased": 0, "used": 40, "held": 60, "available": 0}
    _error(client.post(f"{API}/credits/holds", json={"credits": 1}, headers=headers),
           402, "insufficient_credits")
    listed = client.get(f"{API}/credits/holds", headers=headers).json()
    assert [h["id"] for h in listed] == [body["hold_id"]]


def test_capture_spends_part_through_the_ledger_and_releases_the_rest(client, db):
    user = make_user(db, credits=100)
    headers = auth_headers(user)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 60, "endpoint": "/v1/chat"},
                          headers=headers).json()["hold_id"]
    captured = client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 25},
                           headers=headers)
    assert captured.status_code == 200, captured.text
    body = captured.json()
    assert (body["captured"], body["balance"], body["available"]) == (25, 75, 75)
    entry = db.get(CreditTransaction, body["transaction_id"])
    assert (entry.kind, entry.amount, entry.reference_type, entry.reference_id) == (
        "hold_capture", -25, "hold", hold_id)
    assert _state(db, user.id) == (75, 0, 75)
    assert db.get(User, user.id).credits_used == 25
    # Closed: neither a second capture nor a release changes anything.
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", headers=headers),
           409, "hold_closed")
    _error(client.post(f"{API}/credits/holds/{hold_id}/release", headers=headers),
           409, "hold_closed")
    assert _state(db, user.id) == (75, 0, 75)


def test_a_capture_burns_grants_like_a_spend_and_holds_never_reserve_expired_credits(
    client, db, settings
):
    user = make_user(db)
    purchase = ledger.post(db, user_id=user.id, amount=40, kind="purchase").grant_id
    promo = ledger.post(db, user_id=user.id, amount=20, kind="promo",
                        expires_at=utc_now() + timedelta(days=2)).grant_id
    lapsed = ledger.post(db, user_id=user.id, amount=10, kind="bonus",
                         expires_at=utc_now() + timedelta(days=1)).grant_id
    db.execute(text("UPDATE credit_grants SET expires_at = now() - interval '1 second' "
                    "WHERE id = :id"), {"id": lapsed})
    db.commit()
    headers = auth_headers(user)
    # 70 stored, but the lapsed 10 leave before the hold is weighed: 60 can be held.
    _error(client.post(f"{API}/credits/holds", json={"credits": 61}, headers=headers),
           402, "insufficient_credits")
    hold = client.post(f"{API}/credits/holds", json={"credits": 50}, headers=headers).json()
    assert (hold["balance"], hold["available"]) == (60, 10)
    body = client.post(f"{API}/credits/holds/{hold['hold_id']}/capture", json={"credits": 30},
                       headers=headers).json()
    assert (body["balance"], body["available"]) == (30, 30)
    entry = db.get(CreditTransaction, body["transaction_id"])
    assert [(m["grant_id"], m["credits"]) for m in entry.grants] == [(promo, -20),
                                                                     (purchase, -10)]
    db.expire_all()
    assert [db.get(CreditGrant, g).remaining for g in (promo, purchase, lapsed)] == [0, 30, 0]
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        assert integrity.check_ledger(session).mismatches == []


def test_capture_without_amount_takes_it_all_and_release_spends_nothing(client, db):
    user = make_user(db, credits=50)
    headers = auth_headers(user)
    first = client.post(f"{API}/credits/holds", json={"credits": 20}, headers=headers).json()
    second = client.post(f"{API}/credits/holds", json={"credits": 30}, headers=headers).json()
    assert second["available"] == 0
    whole = client.post(f"{API}/credits/holds/{first['hold_id']}/capture", headers=headers)
    assert (whole.json()["captured"], whole.json()["balance"], whole.json()["available"]) == (
        20, 30, 0)
    released = client.post(f"{API}/credits/holds/{second['hold_id']}/release", headers=headers)
    assert released.json() == {"hold_id": second["hold_id"], "balance": 30, "available": 30}
    assert _state(db, user.id) == (30, 0, 30)
    assert _active_holds(db, user.id) == 0


def test_a_capture_retried_with_its_idempotency_key_replays_the_first(client, db):
    user = make_user(db, credits=10)
    headers = auth_headers(user)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 8},
                          headers=headers).json()["hold_id"]
    keyed = {**headers, "Idempotency-Key": "capture-once-1"}
    first = client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 5},
                        headers=keyed)
    again = client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 5},
                        headers=keyed)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 6},
                       headers=keyed), 409, "idempotency_key_reused")
    assert _state(db, user.id) == (5, 0, 5)


@pytest.mark.parametrize("body, status, code", [
    ({"credits": 0}, 422, "validation_error"),
    ({"credits": -5}, 422, "validation_error"),
    ({"credits": "5"}, 422, "validation_error"),
    ({"credits": 5, "ttl_s": 0}, 422, "validation_error"),
    ({"credits": 5, "ttl_s": 86_401}, 422, "validation_error"),
    ({"credits": 31}, 402, "insufficient_credits"),
])
def test_bad_holds_are_refused_and_change_nothing(client, db, body, status, code):
    user = make_user(db, credits=30)
    _error(client.post(f"{API}/credits/holds", json=body, headers=auth_headers(user)),
           status, code)
    assert _state(db, user.id) == (30, 0, 30)
    assert _active_holds(db, user.id) == 0


def test_bad_captures_are_refused_and_another_users_hold_is_not_found(client, db):
    owner, other = make_user(db, credits=30), make_user(db, credits=30)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 10},
                          headers=auth_headers(owner)).json()["hold_id"]
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 11},
                       headers=auth_headers(owner)), 400, "capture_exceeds_hold")
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", json={"credits": 0},
                       headers=auth_headers(owner)), 422, "validation_error")
    for action in ("capture", "release"):
        _error(client.post(f"{API}/credits/holds/{hold_id}/{action}",
                           headers=auth_headers(other)), 404, "hold_not_found")
    _error(client.post(f"{API}/credits/holds/not-a-uuid/capture", headers=auth_headers(owner)),
           422, "validation_error")
    assert _state(db, owner.id) == (30, 10, 30)
    assert _state(db, other.id) == (30, 0, 30)


def test_an_expired_hold_frees_its_credits_when_read_and_cannot_be_captured(client, db):
    user = make_user(db, credits=40)
    headers = auth_headers(user)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 40, "ttl_s": 5},
                          headers=headers).json()["hold_id"]
    _age(db, hold_id)
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", headers=headers),
           409, "hold_expired")
    credits = client.get(f"{API}/credits", headers=headers).json()
    assert (credits["held"], credits["available"]) == (0, 40)
    assert db.get(CreditHold, hold_id).status == "expired"
    _error(client.post(f"{API}/credits/holds/{hold_id}/release", headers=headers),
           409, "hold_expired")
    assert _state(db, user.id) == (40, 0, 40)


def test_a_spend_refused_for_a_due_hold_expires_it_and_goes_through(client, db):
    user = make_user(db, credits=10)
    headers = auth_headers(user)
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 10},
                          headers=headers).json()["hold_id"]
    _age(db, hold_id)
    spent = client.post(f"{API}/credits/use", json={"credits": 10}, headers=headers)
    assert spent.status_code == 200, spent.text
    assert _state(db, user.id) == (0, 0, 0)


def test_beat_expires_due_holds_of_every_user(db, settings):
    users = [make_user(db, credits=20) for _ in range(3)]
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        made = [holds.create(session, user_id=u.id, credits=15, ttl_s=60) for u in users]
    for opened in made[:2]:
        _age(db, opened.hold_id)
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        assert holds.expire_due(session) == 2
    assert [_state(db, u.id)[1] for u in users] == [0, 0, 15]
    schedule = beat_schedule(settings)["holds-expire"]
    assert schedule["task"] == "maintenance.expire_holds" and schedule["schedule"] <= 60


def _pool(live_api: str, workers: int):
    local = threading.local()
    barrier = threading.Barrier(workers)

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=live_api, timeout=60)
            barrier.wait()
        return local.client

    return client


def test_fifty_concurrent_holds_never_reserve_more_than_the_balance(live_api, db):
    user = make_user(db, credits=1000)
    headers = auth_headers(user)
    client = _pool(live_api, 10)

    def hold(_: int) -> httpx.Response:
        return client().post(f"{API}/credits/holds", json={"credits": 30}, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        made = list(pool.map(hold, range(50)))
    assert sorted({r.status_code for r in made}) == [201, 402]
    opened = [r.json()["hold_id"] for r in made if r.status_code == 201]
    assert len(opened) == 33  # 33 * 30 = 990 <= 1000 < 34 * 30
    assert _state(db, user.id) == (1000, 990, 1000)

    # Captures (of random amounts) and releases in random order, all at once, with spends.
    rng = random.Random(17)
    actions = [(h, rng.choice(["capture", "release"]), rng.randint(1, 30)) for h in opened]
    rng.shuffle(actions)

    def close(action: tuple[str, str, int]) -> tuple[str, int, int]:
        hold_id, verb, amount = action
        response = client().post(f"{API}/credits/holds/{hold_id}/{verb}",
                                 json={"credits": amount} if verb == "capture" else None,
                                 headers=headers)
        return verb, amount, response.status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        done = list(pool.map(close, actions))
    assert {status for _, _, status in done} == {200}
    captured = sum(amount for verb, amount, _ in done if verb == "capture")
    assert _state(db, user.id) == (1000 - captured, 0, 1000 - captured)
    assert _active_holds(db, user.id) == 0


def test_a_hold_expiring_while_its_capture_is_in_flight_is_closed_by_exactly_one(
    live_api, db, settings
):
    user = make_user(db, credits=200)
    headers = auth_headers(user)
    with httpx.Client(base_url=live_api, timeout=30) as http:
        ids = [http.post(f"{API}/credits/holds", json={"credits": 10}, headers=headers).json()[
            "hold_id"] for _ in range(20)]
    clients = [httpx.Client(base_url=live_api, timeout=30) for _ in range(5)]
    for http in clients:  # connected before the race starts
        http.get("/healthz")
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            with transaction(settings.database_url, acting_as=rls.OWNER) as session:
                holds.expire_user(session, user_id=user.id)

    results: list[tuple[str, int, str | None]] = []

    def capture(http: httpx.Client, mine: list[str], started: float) -> None:
        for hold_id in mine:
            # spread the captures across the moment the holds fall due
            time.sleep(max(0.0, started + random.uniform(0.1, 0.5) - time.monotonic()))
            response = http.post(f"{API}/credits/holds/{hold_id}/capture", headers=headers)
            code = response.json()["error"]["code"] if response.status_code != 200 else None
            results.append((hold_id, response.status_code, code))

    # Every hold falls due 0.3 s from now, while captures and sweeps race for them.
    db.execute(text("UPDATE credit_holds SET expires_at = now() + interval '300 milliseconds' "
                    "WHERE user_id = :u"), {"u": user.id})
    db.commit()
    started = time.monotonic()
    threads = [threading.Thread(target=sweep)] + [
        threading.Thread(target=capture, args=(http, ids[i::5], started))
        for i, http in enumerate(clients)
    ]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.25)
    threads[0].start()
    for thread in threads[1:]:
        thread.join()
    stop.set()
    threads[0].join()
    for http in clients:
        http.close()
    assert len(results) == 20
    db.expire_all()
    for hold_id, status, code in results:
        hold = db.get(CreditHold, hold_id)
        entries = db.scalar(select(func.count()).select_from(CreditTransaction).where(
            CreditTransaction.reference_id == hold_id))
        if status == 200:
            assert (hold.status, entries) == ("captured", 1)
        else:
            assert (status, code, hold.status, entries) == (409, "hold_expired", "expired", 0)
    captured = sum(1 for _, status, _ in results if status == 200)
    assert _state(db, user.id) == (200 - 10 * captured, 0, 200 - 10 * captured)
