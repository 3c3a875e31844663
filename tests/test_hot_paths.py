"""The event-loop routes (spend, webhook, admin stats) and their async pool (``db.aio``)."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from db.models import User
from tests.factories import auth_headers, make_user

USE = "/api/user-management/credits/use"


def test_the_pool_recovers_from_a_restarted_server_without_a_failure_per_connection(
    settings, db
):
    """A dead connection fails the statement that finds it (the API answers 503); the pool
    then drops its other dead connections at once instead of failing one call for each."""
    import asyncio

    import psycopg

    from db.aio import AsyncDatabase

    name = f"billing-test-{uuid.uuid4().hex[:8]}"  # only this test's pool is killed
    probe = text("SELECT 1 AS one")

    async def run() -> tuple[int, list[str]]:
        aio = AsyncDatabase(settings.database_url, min_size=6, max_size=6,
                            application_name=name)
        await aio.open()
        await aio.pool.wait()
        try:
            killed = db.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"), {"name": name})
            db.commit()
            outcomes = []
            for _ in range(12):
                try:
                    await aio.fetchone(probe, {}, scope="service")
                    outcomes.append("ok")
                except psycopg.OperationalError:
                    outcomes.append("lost")
                await asyncio.sleep(0.05)
            return int(killed or 0), outcomes
        finally:
            await aio.close()

    killed, outcomes = asyncio.run(run())
    assert killed == 6
    assert outcomes.count("lost") < 3, outcomes
    assert outcomes[-6:] == ["ok"] * 6, outcomes


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
