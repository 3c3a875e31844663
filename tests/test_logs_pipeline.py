"""Usage and sign-in logs: handed off to Redis streams, written in batches by real workers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis
import redis.asyncio
from sqlalchemy import func, select, text

from bench.load import free_port
from db import rls
from db.models import ApiUsageLog, LoginHistory, UsageDaily
from db.transaction import transaction
from services import task_queue
from services.autopipeline import AutoPipelineRedis
from services.logs import consumer, logstream, writer
from tests.factories import auth_headers, make_user
from tests.support import wait_for


@pytest.fixture
def rds(settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def sender(settings) -> None:
    """This process publishes tasks (the kick that starts a drain) like the API does."""
    task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(settings.redis_url)))


def _count(db, model) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(model)) or 0


def _hand_off_quietly(rds, **fields) -> None:
    """Add a usage record as the producer does, minus the kick: these tests drain in-process,
    and the session's shared worker must not race them."""
    rds.xadd(logstream.USAGE_STREAM, {"r": json.dumps(logstream._stamp(fields), default=str)})


def _drain_in_process(settings, rds, kind: str = "usage", **kw) -> consumer.DrainResult:
    return consumer.drain(settings.database_url, rds, kind, **kw)


def _hand_off(settings, records: list[dict]) -> None:
    """Hand usage records off as the spend route does (``record_usage``, on an event loop)."""

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            for fields in records:
                await logstream.record_usage(client, **fields)
        finally:
            await client.aclose()

    asyncio.run(run())
    assert task_queue.flush(timeout=10)  # the drain kick, sent from the background


def test_burst_of_usage_records_is_written_once_each(db, rds, sender, settings, celery_worker):
    user = make_user(db)
    _hand_off(settings, [
        {"user_id": user.id, "endpoint": "/v1/generate", "method": "POST", "credits": 1 + i % 3,
         "status_code": 200, "response_time_ms": 1.5, "request_id": f"req-{i}"}
        for i in range(600)
    ])

    # No beat runs here: the first record's kick alone must get everything written.
    wait_for(lambda: _count(db, ApiUsageLog) == 600, timeout=30, message="600 usage rows")
    wait_for(lambda: rds.xlen(logstream.USAGE_STREAM) == 0, timeout=10, message="stream emptied")
    assert logstream.pending(rds, "usage") == 0
    assert db.scalar(select(func.count(func.distinct(ApiUsageLog.request_id)))) == 600
    rollup = db.execute(select(func.sum(UsageDaily.calls), func.sum(UsageDaily.credits))).one()
    assert tuple(rollup) == (600, sum(1 + i % 3 for i in range(600)))


def test_a_refused_spend_hands_off_no_usage_record(db, client, celery_worker):
    user = make_user(db, credits=1)
    use = "/api/user-management/credits/use"
    refused = client.post(use, json={"credits": 5, "endpoint": "/v1/lost"},
                          headers=auth_headers(user))
    assert refused.status_code == 402
    kept = client.post(use, json={"credits": 1, "endpoint": "/v1/kept"},
                       headers=auth_headers(user))
    assert kept.status_code == 200
    wait_for(lambda: _count(db, ApiUsageLog) >= 1, timeout=20, message="the kept record")
    time.sleep(0.5)
    assert db.scalars(select(ApiUsageLog.endpoint)).all() == ["/v1/kept"]


def test_login_attempts_are_written_and_unknown_users_kept_without_the_user(
    db, rds, sender, celery_worker
):
    user = make_user(db)
    logstream.record_login(rds, user_id=str(user.id), identifier=user.email, method="password",
                           success=True, reason=None, ip="203.0.113.9", user_agent="curl/8")
    ghost = uuid.uuid4()
    logstream.record_login(rds, user_id=str(ghost), identifier="ghost@example.com",
                           method="password", success=False, reason="bad_credentials",
                           ip="not-an-ip", user_agent="x" * 5000)
    wait_for(lambda: _count(db, LoginHistory) == 2, timeout=20, message="2 login rows")
    rows = {r.identifier: r for r in db.scalars(select(LoginHistory))}
    assert rows[user.email].user_id == user.id and str(rows[user.email].ip) == "203.0.113.9"
    ghost_row = rows["ghost@example.com"]
    assert ghost_row.user_id is None and ghost_row.ip is None and not ghost_row.success
    assert len(ghost_row.user_agent) == 1000


def test_poison_and_orphan_records_are_parked_without_blocking_the_stream(db, rds, settings):
    user = make_user(db)
    rds.xadd(logstream.USAGE_STREAM, {"r": b"{not json"})
    rds.xadd(logstream.USAGE_STREAM, {"r": json.dumps({"id": str(uuid.uuid4()),
                                                       "endpoint": "/x"})})
    _hand_off_quietly(rds, user_id=str(uuid.uuid4()), endpoint="/v1/orphan",
                               status_code=200)
    _hand_off_quietly(rds, user_id=str(user.id), endpoint="/v1/ok", status_code=201)

    result = _drain_in_process(settings, rds)

    assert (result.read, result.written, result.parked) == (4, 1, 3)
    assert db.scalars(select(ApiUsageLog.endpoint)).all() == ["/v1/ok"]
    assert rds.xlen(logstream.USAGE_STREAM) == 0 and logstream.pending(rds, "usage") == 0
    parked = rds.xrange(logstream.dead_letter_key(logstream.USAGE_STREAM))
    reasons = sorted(fields[b"reason"].decode() for _, fields in parked)
    assert len(reasons) == 3
    assert "user does not exist" in reasons
    assert any("created_at" in r for r in reasons)  # names what is wrong


def test_entries_of_a_consumer_that_died_before_acknowledging_are_written_once(
    db, rds, settings
):
    user = make_user(db)
    for i in range(50):
        _hand_off_quietly(rds, user_id=str(user.id), endpoint="/v1/a", credits=2,
                                   status_code=200, request_id=f"r{i}")
    consumer.ensure_group(rds, logstream.USAGE_STREAM)
    # A consumer reads the batch, writes it, commits, and dies before XACK.
    delivered = rds.xreadgroup(logstream.GROUP, "dead-consumer", {logstream.USAGE_STREAM: ">"},
                               count=100)[0][1]
    pairs, _ = consumer._parse_entries(writer.KINDS["usage"], delivered)
    records = [record for _, record in pairs]
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        writer.write_usage(session, records[:30])
    assert logstream.pending(rds, "usage") == 50

    # Within the idle time the entries still belong to the (maybe alive) consumer.
    assert _drain_in_process(settings, rds, claim_idle_ms=60_000).read == 0
    result = _drain_in_process(settings, rds, claim_idle_ms=0)

    assert (result.reclaimed, result.written) == (50, 20)
    assert _count(db, ApiUsageLog) == 50
    assert db.execute(select(UsageDaily.calls, UsageDaily.credits)).one() == (50, 100)
    assert logstream.pending(rds, "usage") == 0 and rds.xlen(logstream.USAGE_STREAM) == 0


def test_only_one_drain_per_stream_runs_at_a_time(db, rds, settings):
    user = make_user(db)
    _hand_off_quietly(rds, user_id=str(user.id), endpoint="/v1/a", status_code=200)
    held = rds.lock("billing:logs:usage:lock", timeout=30)
    assert held.acquire(blocking=False)
    try:
        assert _drain_in_process(settings, rds).skipped
        assert _count(db, ApiUsageLog) == 0
    finally:
        held.release()
    assert _drain_in_process(settings, rds).written == 1


def test_worker_killed_mid_batch_loses_no_record_and_writes_none_twice(
    db, rds, sender, settings, own_worker, only_own_worker
):
    user = make_user(db)
    total = 30_000
    # The whole backlog first, with no worker consuming (the shared one is paused): a
    # worker started earlier could drain as fast as records arrive and be done before it
    # could be killed mid-batch.
    _hand_off(settings, [
        {"user_id": user.id, "endpoint": f"/v1/e{i % 4}", "method": "POST", "credits": 1,
         "status_code": 200, "request_id": f"k{i}"}
        for i in range(total)
    ])
    own_worker.start()

    # Kill the worker while it is draining: rows written, entries still pending.
    wait_for(lambda: _count(db, ApiUsageLog) > 0 and logstream.pending(rds, "usage") > 0,
             timeout=60, interval=0.01, message="the drain to be under way")
    own_worker.kill()
    written_at_kill = _count(db, ApiUsageLog)
    assert written_at_kill < total, "the worker finished before it could be killed"
    assert logstream.pending(rds, "usage") > 0 or rds.xlen(logstream.USAGE_STREAM) > 0

    own_worker.start()

    def written_all() -> bool:
        # What beat does in production: a backstop drain every second.
        task_queue.send_now("logs.drain", "usage")
        return _count(db, ApiUsageLog) >= total and rds.xlen(logstream.USAGE_STREAM) == 0

    wait_for(written_all, timeout=90, interval=1.0, message="every record written")
    time.sleep(1)
    assert _count(db, ApiUsageLog) == total
    assert db.scalar(select(func.count(func.distinct(ApiUsageLog.request_id)))) == total
    assert db.scalar(select(func.sum(UsageDaily.calls))) == total  # rollup counted once each
    assert logstream.pending(rds, "usage") == 0
    assert db.scalar(text("SELECT count(*) FROM api_usage_log WHERE request_id = 'k0'")) == 1


def test_burst_of_spends_over_http_produces_one_usage_record_each(db, client, celery_worker):
    from db.models import CreditTransaction

    user = make_user(db, credits=1000)
    for i in range(120):
        response = client.post("/api/user-management/credits/use", headers=auth_headers(user),
                               json={"credits": 1, "endpoint": f"/v1/e{i % 3}"})
        assert response.status_code == 200, response.text
    wait_for(lambda: _count(db, ApiUsageLog) >= 120, timeout=30, message="120 usage rows")
    time.sleep(0.5)
    spends = set(db.scalars(select(CreditTransaction.id).where(
        CreditTransaction.kind == "usage")))
    logged = db.scalars(select(ApiUsageLog.transaction_id)).all()
    assert len(logged) == 120 and set(logged) == spends  # one record per spend, none extra


# --- records the database cannot take -------------------------------------------------------


def test_login_with_a_nul_in_the_email_is_written_cleaned_and_blocks_nothing(
    db, rds, client, celery_worker
):
    first = client.post("/api/auth/login", json={"email": "a\u0000b", "password": "x"})
    assert first.status_code == 401, first.text
    later = client.post("/api/auth/login",
                        json={"email": "later@example.com", "password": "not-the-password"})
    assert later.status_code == 401, later.text

    wait_for(lambda: _count(db, LoginHistory) == 2, timeout=30, message="2 login rows")
    rows = db.scalars(select(LoginHistory).order_by(LoginHistory.created_at)).all()
    assert [(r.identifier, r.success) for r in rows] == [("ab", False),
                                                          ("later@example.com", False)]
    wait_for(lambda: rds.xlen(logstream.LOGIN_STREAM) == 0, timeout=10, message="stream emptied")
    assert logstream.pending(rds, "login") == 0
    assert rds.xlen(logstream.dead_letter_key(logstream.LOGIN_STREAM)) == 0


def test_text_the_database_cannot_hold_is_cleaned_even_when_queued_raw(db, rds, settings):
    user = make_user(db)
    # Entries as an older (or another) producer queued them, without cleaning.
    login = {"id": str(uuid.uuid4()), "created_at": "2030-01-01T00:00:00+23:00",
             "user_id": str(user.id), "identifier": "x\u0000y@example.com", "method": "password",
             "success": False, "reason": "wrong\u0000password", "ip": "fe80::1%eth0",
             "user_agent": "agent\u0000/1"}
    rds.xadd(logstream.LOGIN_STREAM, {"r": json.dumps(login)})
    _hand_off_quietly(rds, user_id=str(user.id), endpoint="/v1/\u0000nul", method="PO\u0000ST",
                      status_code=200, request_id="req\u0000-1")

    assert _drain_in_process(settings, rds, "login").written == 1
    assert _drain_in_process(settings, rds, "usage").written == 1

    row = db.scalars(select(LoginHistory)).one()
    assert (row.identifier, row.reason, row.user_agent) == ("xy@example.com", "wrongpassword",
                                                            "agent/1")
    assert str(row.ip) == "fe80::1" and row.user_id == user.id
    usage = db.scalars(select(ApiUsageLog)).one()
    assert (usage.endpoint, usage.method, usage.request_id) == ("/v1/nul", "POST", "req-1")
    for stream in logstream.STREAMS.values():
        assert rds.xlen(stream) == 0 and rds.xlen(logstream.dead_letter_key(stream)) == 0


@pytest.fixture(params=["22023", "23514"], ids=["data_error", "constraint_violation"])
def refusing_database(request, engine, db):
    """The database refuses records the validators accept (as a constraint the writer does not
    know about would): rows naming "poison" fail with the given SQLSTATE."""
    with engine.begin() as conn:
        conn.execute(text(f"""
            CREATE FUNCTION test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF to_jsonb(NEW)::text LIKE '%poison%' THEN
                    RAISE EXCEPTION 'refused for the test' USING ERRCODE = '{request.param}';
                END IF;
                RETURN NEW;
            END $$"""))
        for table in ("api_usage_log", "login_history"):
            conn.execute(text(f"CREATE TRIGGER test_refuse_poison BEFORE INSERT ON {table} "
                              "FOR EACH ROW EXECUTE FUNCTION test_refuse_poison()"))
    yield request.param
    db.rollback()  # the test's reads would hold back the DROP (it locks the tables)
    with engine.begin() as conn:
        conn.execute(text("DROP FUNCTION test_refuse_poison() CASCADE"))


def test_records_the_database_refuses_are_set_aside_and_the_rest_written_once(
    db, rds, settings, refusing_database
):
    user = make_user(db)
    poison_ids = []
    for i in range(10):
        _hand_off_quietly(rds, user_id=str(user.id), endpoint="/v1/ok", credits=i,
                          status_code=500 if i == 7 else 200, request_id=f"ok-{i}")
        if i in (0, 4, 9):  # first, middle and last of the batch
            poison_ids.append(rds.xadd(logstream.USAGE_STREAM, {"r": json.dumps(logstream._stamp(
                {"user_id": str(user.id), "endpoint": "/v1/poison", "credits": 100,
                 "status_code": 200, "request_id": f"poison-{i}"}), default=str)}))
    entries = rds.xrange(logstream.USAGE_STREAM)

    result = _drain_in_process(settings, rds)

    assert (result.read, result.written, result.parked) == (13, 10, 3)
    assert sorted(db.scalars(select(ApiUsageLog.request_id))) == [f"ok-{i}" for i in range(10)]
    rollup = db.execute(select(UsageDaily.endpoint, UsageDaily.calls, UsageDaily.credits,
                               UsageDaily.errors)).all()
    assert rollup == [("/v1/ok", 10, 45, 1)]  # the refused pieces' rollup was undone
    assert rds.xlen(logstream.USAGE_STREAM) == 0 and logstream.pending(rds, "usage") == 0
    parked = rds.xrange(logstream.dead_letter_key(logstream.USAGE_STREAM))
    assert sorted(fields[b"entry"] for _, fields in parked) == sorted(poison_ids)
    for _, fields in parked:
        assert fields[b"reason"].decode().startswith("database refused the record")
        assert refusing_database in fields[b"reason"].decode()
        assert b"poison" in fields[b"r"]  # kept for inspection, never retried

    # The same entries delivered again (a drain that died before acknowledging): no row
    # and no rollup twice, and the refused ones are set aside again.
    for _, fields in entries:
        rds.xadd(logstream.USAGE_STREAM, fields)
    again = _drain_in_process(settings, rds)
    assert (again.read, again.written, again.parked) == (13, 0, 3)
    assert _count(db, ApiUsageLog) == 10
    assert db.execute(select(UsageDaily.calls, UsageDaily.credits)).one() == (10, 45)
    assert rds.xlen(logstream.USAGE_STREAM) == 0 and logstream.pending(rds, "usage") == 0


def test_a_refused_login_record_does_not_stop_the_login_history(
    db, rds, sender, celery_worker, refusing_database
):
    user = make_user(db)
    # Queued raw, ahead of everything else: before, every drain failed on it, re-claimed it
    # first, and never wrote anything behind it.
    poison = rds.xadd(logstream.LOGIN_STREAM, {"r": json.dumps(logstream._stamp(
        {"identifier": "poison@example.com", "method": "password", "success": False}))})
    for i in range(3):
        logstream.record_login(rds, user_id=str(user.id), identifier=user.email,
                               method="password", success=i == 2,
                               reason=None if i == 2 else "wrong_password", ip="203.0.113.9",
                               user_agent="curl/8")

    wait_for(lambda: _count(db, LoginHistory) == 3, timeout=30, message="3 login rows")
    wait_for(lambda: rds.xlen(logstream.LOGIN_STREAM) == 0, timeout=10, message="stream emptied")
    assert logstream.pending(rds, "login") == 0
    assert set(db.scalars(select(LoginHistory.identifier))) == {user.email}
    parked = rds.xrange(logstream.dead_letter_key(logstream.LOGIN_STREAM))
    assert [fields[b"entry"] for _, fields in parked] == [poison]
    time.sleep(0.5)
    assert _count(db, LoginHistory) == 3


def test_the_api_buffer_sends_its_usage_records_together_and_they_get_written(
    db, rds, sender, settings, celery_worker
):
    """With the API's ``UsageBuffer``, ``record_usage`` sends nothing at once: the records go
    out together in one command a moment later, kick a drain, and are written."""
    user = make_user(db)

    async def run() -> tuple[int, int, int]:
        client = AutoPipelineRedis.from_url(settings.redis_url)
        buffer = logstream.UsageBuffer(client, flush_after_s=0.05)
        try:
            for n in range(30):
                await logstream.record_usage(
                    buffer, user_id=str(user.id), endpoint="/v1/gathered", method="POST",
                    credits=1, status_code=200, response_time_ms=1.0, request_id=f"g-{n}")
            before = (buffer.commands, client.round_trips)  # nothing sent yet
            await asyncio.sleep(0.3)
            return *before, buffer.commands
        finally:
            await buffer.aclose()
            await client.aclose()

    commands_before, trips_before, commands_after = asyncio.run(run())
    assert (commands_before, trips_before) == (0, 0)
    assert commands_after == 1  # 30 records, one command
    assert task_queue.flush(timeout=10)
    wait_for(lambda: _count(db, ApiUsageLog) == 30, timeout=30, message="30 gathered records")
    rows = db.scalars(select(ApiUsageLog.request_id)).all()
    assert sorted(rows) == sorted(f"g-{n}" for n in range(30))  # each once


def test_the_usage_buffer_sends_a_full_batch_at_once_and_the_rest_when_closed(rds, settings):
    # A drain already kicked: none is sent, and the stream keeps the entries to look at.
    rds.set(logstream.kick_key(logstream.USAGE_STREAM), "1", ex=60)

    async def run() -> tuple[int, int]:
        client = AutoPipelineRedis.from_url(settings.redis_url)
        buffer = logstream.UsageBuffer(client, flush_after_s=60, max_batch=10)
        try:
            for n in range(25):
                await logstream.record_usage(
                    buffer, user_id=str(uuid.uuid4()), endpoint="/v1/full", method="POST",
                    credits=1, status_code=200, response_time_ms=1.0, request_id=f"f-{n}")
            await asyncio.sleep(0.2)
            full = buffer.commands  # two full batches went; five records wait for a minute
        finally:
            await buffer.aclose()  # ... or for the close
            await client.aclose()
        return full, buffer.commands

    assert asyncio.run(run()) == (2, 3)
    entries = rds.xrange(logstream.USAGE_STREAM)
    assert [json.loads(fields[b"r"])["request_id"] for _, fields in entries] == [
        f"f-{n}" for n in range(25)]  # one entry per record, in order


def test_usage_records_that_redis_refuses_are_logged_not_raised(settings, caplog):
    async def run() -> None:
        client = AutoPipelineRedis.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                            socket_connect_timeout=1)
        buffer = logstream.UsageBuffer(client)
        try:
            for n in range(3):
                await logstream.record_usage(buffer, user_id=str(uuid.uuid4()),
                                             endpoint="/v1/x", method="GET", credits=0,
                                             status_code=200, response_time_ms=1.0,
                                             request_id=f"lost-{n}")
        finally:
            await buffer.aclose()
            await client.aclose()

    with caplog.at_level("ERROR", logger="billing.logs"):
        asyncio.run(run())
    assert any("3 usage records dropped" in r.getMessage() for r in caplog.records)
