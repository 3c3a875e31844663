"""Many clients spending from one account at once, over real HTTP: never an overspend."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import func, select

from db.models import CreditTransaction, User
from tests.factories import auth_headers, make_user

API = "/api/user-management"


def _ledger_sum(db, user_id) -> int:
    return db.scalar(
        select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
            CreditTransaction.user_id == user_id
        )
    )


def _fire(live_api: str, requests: list[tuple[dict, dict]], workers: int) -> list[httpx.Response]:
    """Send every (headers, body) POST /credits/use from ``workers`` threads, all at once."""
    barrier = threading.Barrier(workers)
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=live_api, timeout=60)
            barrier.wait()  # every thread is connected before the first request
        return local.client

    def send(item: tuple[dict, dict]) -> httpx.Response:
        headers, body = item
        return client().post(f"{API}/credits/use", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(send, requests))


def test_concurrent_spends_over_http_succeed_exactly_as_far_as_the_balance_goes(live_api, db):
    user = make_user(db, credits=37)
    headers = auth_headers(user)
    # 80 requests of 1 credit from 16 clients: 37 fit, 43 must be refused.
    responses = _fire(live_api, [(headers, {"credits": 1, "endpoint": "/v1/x"})] * 80, workers=16)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 37, statuses
    assert statuses.count(402) == 43, statuses
    refused = [r.json()["error"] for r in responses if r.status_code == 402]
    assert {e["code"] for e in refused} == {"insufficient_credits"}
    assert all(0 <= e["balance"] < 37 for e in refused)
    # Every success saw a distinct balance: the 37 debits were serialised, none lost.
    balances = sorted(r.json()["balance"] for r in responses if r.status_code == 200)
    assert balances == list(range(37))
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 0
    assert _ledger_sum(db, user.id) == 0
    negative = db.scalar(
        select(func.count()).select_from(CreditTransaction).where(CreditTransaction.balance_after < 0)
    )
    assert negative == 0


def test_mixed_amounts_from_many_clients_never_overdraw(live_api, db):
    user = make_user(db, credits=100)
    headers = auth_headers(user)
    amounts = [7, 3, 11, 5, 2] * 8  # 224 credits asked for, 100 available
    responses = _fire(live_api, [(headers, {"credits": n}) for n in amounts], workers=12)
    spent = sum(n for n, r in zip(amounts, responses, strict=True) if r.status_code == 200)
    assert all(r.status_code in (200, 402) for r in responses)
    db.expire_all()
    stored = db.get(User, user.id)
    assert stored.credit_balance == 100 - spent >= 0
    assert stored.credits_used == spent
    assert _ledger_sum(db, user.id) == stored.credit_balance
    # The 402s were right: when the spends ended, no refused amount would have fit.
    refused = [n for n, r in zip(amounts, responses, strict=True) if r.status_code == 402]
    assert all(n > stored.credit_balance for n in refused)
