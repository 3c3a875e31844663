"""The event-loop routes (spend, webhook, admin stats) and their async pool (``db.aio``)."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import text

from db.models import User
from tests.factories import auth_headers, make_user
from tests.support import wait_for

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


def test_spend_with_redis_down_still_spends_and_still_refuses_a_signed_out_token(
    make_client, db, tmp_path, caplog
):
    """The spend needs no Redis: its token's revocation is checked in PostgreSQL, in the
    spend's own statement; only its usage record is lost (and the loss logged)."""
    from cli.embedded import EmbeddedRedis

    broker = EmbeddedRedis(tmp_path, persist=False)
    client = make_client(redis_url=broker.start())
    user = make_user(db, credits=5)
    signed_out = auth_headers(user)
    try:
        assert client.post(USE, json={"credits": 1}, headers=auth_headers(user)).status_code == 200
        assert client.post("/api/auth/logout", json={}, headers=signed_out).status_code == 204
        broker.stop()
        logging.getLogger().addHandler(caplog.handler)  # create_app() replaced the handlers
        with caplog.at_level("ERROR", logger="services.logs.logstream"):
            down = client.post(USE, json={"credits": 1}, headers=auth_headers(user))
            refused = client.post(USE, json={"credits": 1}, headers=signed_out)
            # The gathered record goes out 20 ms later, in vain: its loss is logged.
            wait_for(lambda: any("usage records dropped" in r.getMessage()
                                 for r in caplog.records), timeout=15, message="the loss logged")
    finally:
        broker.stop()
    assert down.status_code == 200 and down.json()["balance"] == 3
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "token_revoked")
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 3
