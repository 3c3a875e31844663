"""The event-loop routes (spend, webhook, admin stats) and their async pool (``db.aio``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from db.aio import APPLICATION_NAME
from db.models import User
from tests.factories import auth_headers, make_user

USE = "/api/user-management/credits/use"


def _terminate_async_connections(db) -> int:
    """Kill the API's async connections server-side, as a database restart would."""
    killed = db.scalar(text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = :name"
    ), {"name": APPLICATION_NAME})
    db.commit()
    return int(killed or 0)


def test_the_pool_recovers_from_a_restarted_server_after_few_503s(client, db):
    user = make_user(db, credits=1000)
    headers = auth_headers(user)
    # Concurrent spends open several pooled connections.
    with ThreadPoolExecutor(8) as pool:
        warm = list(pool.map(lambda _: client.post(USE, json={"credits": 1}, headers=headers),
                             range(40)))
    assert {r.status_code for r in warm} == {200}
    idle = db.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                     {"n": APPLICATION_NAME})
    assert idle >= 3
    assert _terminate_async_connections(db) == idle

    answers = [client.post(USE, json={"credits": 1}, headers=headers) for _ in range(idle + 5)]
    codes = [r.status_code for r in answers]
    failed = [r for r in answers if r.status_code != 200]
    # A dead connection fails the request that finds it (503, the contract's shape, nothing
    # spent); the pool then drops the other dead ones instead of failing a request for each.
    assert all(r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"
               for r in failed)
    assert len(failed) < idle, codes
    assert codes[-5:] == [200] * 5, codes
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 1000 - 40 - (len(codes) - len(failed))


def test_spend_refusals_on_the_event_loop_keep_the_contract(client, db):
    poor = make_user(db, credits=2)
    short = client.post(USE, json={"credits": 3}, headers=auth_headers(poor))
    assert short.status_code == 402
    assert short.json()["error"]["code"] == "insufficient_credits"
    assert short.json()["error"]["balance"] == 2
    gone = make_user(db, credits=5, active=False)
    refused = client.post(USE, json={"credits": 1}, headers=auth_headers(gone))
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")
    db.expire_all()
    assert (db.get(User, poor.id).credit_balance, db.get(User, gone.id).credit_balance) == (2, 5)


def test_spend_with_redis_down_is_a_503_and_changes_nothing(make_client, db, tmp_path):
    """The token's revocation cannot be checked: refuse clearly, spend nothing."""
    from cli.embedded import EmbeddedRedis

    broker = EmbeddedRedis(tmp_path, persist=False)
    client = make_client(redis_url=broker.start())
    user = make_user(db, credits=5)
    try:
        assert client.post(USE, json={"credits": 1}, headers=auth_headers(user)).status_code == 200
        broker.stop()
        down = client.post(USE, json={"credits": 1}, headers=auth_headers(user))
    finally:
        broker.stop()
    assert (down.status_code, down.json()["error"]["code"]) == (503, "redis_unavailable")
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 4
