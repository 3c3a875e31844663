"""API keys: secret shown once and stored hashed, scopes, limits under concurrency, revocation."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from db.models import ApiKey, ApiKeySpend, CreditTransaction, User
from tests.factories import auth_headers, make_user

API = "/api/user-management"


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def _key(client, user, **body) -> dict:
    made = client.post(f"{API}/api-keys", json={"name": "server", "scopes": ["credits:spend"],
                                                 **body}, headers=auth_headers(user))
    assert made.status_code == 201, made.text
    return made.json()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_key_is_shown_once_stored_as_its_hash_and_listed_by_prefix(client, db):
    user = make_user(db)
    made = _key(client, user, scopes=["credits:read", "credits:spend"], daily_limit=100)
    secret = made["secret"]
    assert secret.startswith("bk_") and len(secret) >= 40
    assert made["prefix"] == secret[:12] and made["server"] is False
    stored = db.get(ApiKey, made["id"])
    assert stored.secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(stored.__dict__)
    listed = client.get(f"{API}/api-keys", headers=auth_headers(user)).json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert "secret" not in listed[0] and listed[0]["prefix"] == made["prefix"]
    assert listed[0]["scopes"] == ["credits:read", "credits:spend"]


def test_a_key_spends_for_its_user_on_the_routes_its_scopes_name(client, db):
    user, other = make_user(db, credits=50), make_user(db, credits=50)
    spender = _key(client, user)["secret"]
    reader = _key(client, user, scopes=["credits:read"])["secret"]
    spent = client.post(f"{API}/credits/use", json={"credits": 5}, headers=_bearer(spender))
    assert spent.status_code == 200, spent.text
    assert spent.json()["balance"] == 45
    assert client.get(f"{API}/credits", headers=_bearer(reader)).json()["balance"] == 45
    _error(client.get(f"{API}/credits", headers=_bearer(spender)), 403, "api_key_scope_missing")
    _error(client.post(f"{API}/credits/use", json={"credits": 1}, headers=_bearer(reader)),
           403, "api_key_scope_missing")
    _error(client.post(f"{API}/usage/events", json={"events": [{"id": "e1", "credits": 1}]},
                       headers=_bearer(spender)), 403, "api_key_scope_missing")
    # Outside every scope: the profile, the ledger, the keys themselves.
    for method, path in (("GET", "/profile"), ("GET", "/credits/transactions"),
                         ("GET", "/api-keys"), ("POST", "/credits/purchase")):
        _error(client.request(method, f"{API}{path}", headers=_bearer(spender)),
               403, "api_key_not_accepted")
    # The key's user is the request's user: another user's hold is not even found.
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 5},
                          headers=auth_headers(other)).json()["hold_id"]
    _error(client.post(f"{API}/credits/holds/{hold_id}/capture", headers=_bearer(spender)),
           404, "hold_not_found")
    mine = client.post(f"{API}/credits/holds", json={"credits": 5}, headers=_bearer(spender))
    assert mine.status_code == 201 and mine.json()["balance"] == 45
    db.expire_all()
    assert (db.get(User, user.id).credit_balance, db.get(User, other.id).credit_balance) == (45, 50)


def test_a_revoked_key_is_refused_at_its_next_request(client, db):
    user = make_user(db, credits=50)
    made = _key(client, user)
    headers = _bearer(made["secret"])
    assert client.post(f"{API}/credits/use", json={"credits": 1}, headers=headers).status_code == 200
    revoked = client.delete(f"{API}/api-keys/{made['id']}", headers=auth_headers(user))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    _error(client.post(f"{API}/credits/use", json={"credits": 1}, headers=headers),
           401, "api_key_revoked")
    _error(client.post(f"{API}/credits/holds", json={"credits": 1}, headers=headers),
           401, "api_key_revoked")
    _error(client.post(f"{API}/credits/use", json={"credits": 1},
                       headers=_bearer("bk_" + "x" * 43)), 401, "invalid_api_key")
    # Another user cannot revoke it, or even see it.
    _error(client.delete(f"{API}/api-keys/{made['id']}", headers=auth_headers(make_user(db))),
           404, "api_key_not_found")
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 49


def test_last_use_is_recorded_without_a_write_per_request(client, db):
    user = make_user(db, credits=50)
    made = _key(client, user)
    assert made["last_used_at"] is None
    for _ in range(3):
        client.post(f"{API}/credits/use", json={"credits": 1}, headers=_bearer(made["secret"]))
    db.expire_all()
    first = db.get(ApiKey, made["id"]).last_used_at
    assert first is not None
    client.post(f"{API}/credits/use", json={"credits": 1}, headers=_bearer(made["secret"]))
    db.expire_all()
    assert db.get(ApiKey, made["id"]).last_used_at == first  # stamped at most once a minute


@pytest.mark.parametrize("body", [
    {"name": "k", "scopes": ["credits:write"]},
    {"name": "k", "scopes": []},
    {"name": "", "scopes": ["credits:read"]},
    {"name": "k", "scopes": ["credits:read"], "daily_limit": 0},
    {"name": "k", "scopes": ["credits:read"], "monthly_limit": -1},
    {"name": "k", "scopes": ["credits:read"], "owner": "someone"},
])
def test_bad_keys_are_refused_and_nothing_is_made(client, db, body):
    user = make_user(db)
    _error(client.post(f"{API}/api-keys", json=body, headers=auth_headers(user)),
           422, "validation_error")
    assert db.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_server_keys_are_for_admins_and_only_meter_events(client, db):
    user = make_user(db, credits=20)
    _error(client.post(f"{API}/api-keys", json={"name": "s", "scopes": ["events:write"],
                                                 "server": True}, headers=auth_headers(user)),
           403, "admin_required")
    admin = make_user(db, role="admin")
    made = _key(client, admin, scopes=["events:write", "credits:spend"], server=True)
    assert made["server"] is True
    headers = _bearer(made["secret"])
    _error(client.post(f"{API}/credits/use", json={"credits": 1}, headers=headers),
           403, "server_key_not_accepted")
    applied = client.post(f"{API}/usage/events", headers=headers, json={"events": [
        {"id": "srv-1", "user_id": str(user.id), "credits": 3}]})
    assert applied.json()["results"][0]["status"] == "applied", applied.text
    assert [k["id"] for k in client.get(f"{API}/api-keys", headers=auth_headers(admin)).json()
            ] == [made["id"]]
    # Demoted, the admin's server keys stop working.
    db.get(User, admin.id).role = "user"
    db.commit()
    _error(client.post(f"{API}/usage/events", headers=headers, json={"events": [
        {"id": "srv-2", "user_id": str(user.id), "credits": 3}]}), 401, "invalid_api_key")
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 17


def test_a_key_with_a_daily_limit_of_100_never_spends_more_under_20_threads(live_api, client, db):
    user = make_user(db, credits=10_000)
    made = _key(client, user, daily_limit=100, monthly_limit=1000)
    headers = _bearer(made["secret"])
    local = threading.local()
    barrier = threading.Barrier(20)

    def spend(_: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=live_api, timeout=60)
            barrier.wait()
        return local.client.post(f"{API}/credits/use", json={"credits": 7}, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(spend, range(60)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 14, statuses  # 14 * 7 = 98 <= 100 < 15 * 7
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == {
        "key_limit_reached"}
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10_000 - 98
    spent = db.execute(select(ApiKeySpend.period, ApiKeySpend.spent)
                       .where(ApiKeySpend.key_id == made["id"])).all()
    assert sorted(s for _, s in spent) == [98, 98]
    assert db.scalar(select(func.count()).select_from(CreditTransaction).where(
        CreditTransaction.user_id == user.id, CreditTransaction.kind == "usage")) == 14
    # The limit counts holds' captures and events too, and a replayed spend only once.
    keyed = {**headers, "Idempotency-Key": "replay-1"}
    _error(client.post(f"{API}/credits/use", json={"credits": 3}, headers=keyed),
           402, "key_limit_reached")
    hold_id = client.post(f"{API}/credits/holds", json={"credits": 2},
                          headers=headers).json()["hold_id"]
    assert client.post(f"{API}/credits/holds/{hold_id}/capture", headers=headers
                       ).status_code == 200
    events = client.post(f"{API}/usage/events", json={"events": [
        {"id": "a", "credits": 1}, {"id": "b", "credits": 1}]}, headers=_bearer(
            _key(client, user, scopes=["events:write"], daily_limit=1)["secret"]))
    assert [r["status"] for r in events.json()["results"]] == ["applied", "key_limit_reached"]
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10_000 - 98 - 2 - 1
