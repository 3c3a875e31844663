"""Every path through PgBouncer in transaction pooling mode (Debian's 1.18, started here on a
port of its own, ``BILLING_DATABASE_POOLER=transaction``): the spend on the event loop and
with an Idempotency-Key, a purchase paid in localstripe with its webhook stored by the API and
processed by a real worker, the log drain, and the migrations.

PgBouncer hands its 3 server connections out round robin, so even one client's consecutive
transactions land on different server connections: anything that leaned on a session (a
prepared statement, a session SET, a startup option) fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from api.app import create_app
from cli.pgbouncer import PgBouncer
from db.engine import pooled_url
from db.migrate import alembic_config, downgrade, upgrade
from db.models import ApiUsageLog, CreditTransaction, StripeEvent, User
from settings import Settings
from tests import stripe_events as se
from tests.conftest import ARTIFACTS
from tests.factories import auth_headers, make_payment, make_user
from tests.support import served, wait_for

USE = "/api/user-management/credits/use"
# Few server connections, each transaction on the next one: the hardest case for a session.
POOLING = {"default_pool_size": "3", "server_round_robin": "1"}


@pytest.fixture(scope="module")
def pgbouncer(settings, tmp_path_factory) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(settings.database_url, tmp_path_factory.mktemp("pgbouncer"), **POOLING)
    bouncer.start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def pooled_app(pgbouncer):
    """The API with every connection through PgBouncer, as an operator would configure it."""
    return create_app(Settings(database_url=pgbouncer.url, database_pooler="transaction"))


@pytest.fixture
def pooled(pooled_app) -> Iterator[TestClient]:
    with TestClient(pooled_app, raise_server_exceptions=False) as client:
        yield client


def _balance_and_ledger(db, user) -> tuple[int, int]:
    db.expire_all()
    ledger = db.scalar(select(func.coalesce(func.sum(CreditTransaction.amount), 0))
                       .where(CreditTransaction.user_id == user.id))
    return db.get(User, user.id).credit_balance, int(ledger)


def _pending_events(db) -> list[str]:
    db.expire_all()
    return list(db.scalars(select(StripeEvent.id).where(
        StripeEvent.status.not_in(("processed", "ignored")))))


def test_concurrent_spends_on_the_event_loop_through_pgbouncer_keep_the_ledger_exact(
    pooled, pgbouncer, db
):
    users = [make_user(db, credits=500) for _ in range(4)]
    before = pgbouncer.transactions()

    def spend(i: int) -> tuple[int, int, int]:
        answer = pooled.post(USE, json={"credits": 1 + i % 3, "endpoint": "/v1/pooled"},
                             headers=auth_headers(users[i % 4]))
        return i, answer.status_code, 1 + i % 3

    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(spend, range(200)))

    assert [status for _, status, _ in results] == [200] * 200
    for n, user in enumerate(users):
        spent = sum(credits for i, _, credits in results if i % 4 == n)
        assert _balance_and_ledger(db, user) == (500 - spent, 500 - spent)
    refused = pooled.post(USE, json={"credits": 10_000}, headers=auth_headers(users[0]))
    assert refused.status_code == 402
    assert _balance_and_ledger(db, users[0])[0] == 500 - sum(
        c for i, _, c in results if i % 4 == 0)
    assert pooled.get("/readyz").json()["checks"]["database"] == "ok"
    assert pgbouncer.transactions() - before >= 201  # they did go through the pooler


def test_a_spend_with_an_idempotency_key_through_pgbouncer_runs_once(pooled, pgbouncer, db):
    user = make_user(db, credits=100)
    keyed = {**auth_headers(user), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    before = pgbouncer.transactions()

    first = pooled.post(USE, json={"credits": 7}, headers=keyed)
    again = pooled.post(USE, json={"credits": 7}, headers=keyed)
    changed = pooled.post(USE, json={"credits": 8}, headers=keyed)
    # More runs of the same statements than psycopg's threshold for preparing them.
    others = [pooled.post(USE, json={"credits": 1},
                          headers={**auth_headers(user), "Idempotency-Key": f"k-{i}"})
              for i in range(10)]

    assert first.status_code == 200 and again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert (changed.status_code, changed.json()["error"]["code"]) == (
        409, "idempotency_key_reused")
    assert [o.status_code for o in others] == [200] * 10
    assert _balance_and_ledger(db, user) == (100 - 7 - 10, 100 - 7 - 10)
    assert pgbouncer.transactions() - before >= 13


@pytest.mark.usefixtures("only_own_worker")
def test_a_purchase_and_its_webhook_are_processed_by_a_worker_through_pgbouncer(
    pooled_app, pooled, pgbouncer, own_worker, stripe_client, localstripe_url, db, settings,
    tmp_path,
):
    # The worker gets a PgBouncer of its own: what passes through it is the worker's doing.
    worker_bouncer = PgBouncer(settings.database_url, tmp_path / "pgbouncer-worker", **POOLING)
    worker_bouncer.start()
    try:
        own_worker.extra_env = {"BILLING_DATABASE_URL": worker_bouncer.url,
                                "BILLING_DATABASE_POOLER": "transaction"}
        own_worker.log_path = ARTIFACTS / "worker-pgbouncer.log"
        own_worker.concurrency = 1  # one process, one connection: statements repeat on it
        own_worker.start()
        buyer, other = make_user(db), make_user(db)
        # Events of other payments too, so that the worker runs its statements many times.
        payments = [make_payment(db, other) for _ in range(8)]
        with served(pooled_app) as live:
            se.point_localstripe_webhooks(localstripe_url, live + se.WEBHOOK_PATH)
            payment_id, intent_id = se.buy_with_intent(pooled, buyer)
            for payment in payments:
                evt = se.event("payment_intent.succeeded", se.payment_intent(payment))
                assert se.deliver(pooled, evt).status_code == 200
            se.pay(stripe_client, intent_id, "pm_card_visa")  # localstripe calls the webhook

            wait_for(lambda: _balance_and_ledger(db, buyer) == (100, 100), timeout=60,
                     message="the purchase's credits, from localstripe's webhook")
            wait_for(lambda: _balance_and_ledger(db, other) == (800, 800), timeout=60,
                     message="the other payments' credits")
            for _ in range(3):  # usage records for the worker's log drain
                assert pooled.post(USE, json={"credits": 1, "endpoint": "/v1/after"},
                                   headers=auth_headers(other)).status_code == 200
            wait_for(lambda: db.scalar(select(func.count()).select_from(ApiUsageLog).where(
                ApiUsageLog.user_id == other.id)) == 3, timeout=30,
                message="the usage records drained by the worker")
            wait_for(lambda: not _pending_events(db), timeout=30, message="every event handled")
    finally:
        se.point_localstripe_webhooks(localstripe_url, "http://127.0.0.1:9/unused")
        own_worker.kill()
        worker_transactions = worker_bouncer.transactions()
        worker_bouncer.stop()

    db.expire_all()
    processed = db.scalars(select(StripeEvent.id).where(StripeEvent.status == "processed")).all()
    assert len(processed) == 9  # the webhook's and the eight others; the rest ignored types
    grants = db.scalars(select(CreditTransaction.reference_id)
                        .where(CreditTransaction.kind == "purchase")).all()
    assert sorted(grants) == sorted([str(payment_id), *(str(p.id) for p in payments)])
    assert worker_transactions >= 9  # the worker's own work went through its pooler


def test_migrations_run_through_pgbouncer(pgbouncer, scratch_db):
    through = pooled_url(make_url(pgbouncer.url)
                         .set(database=make_url(scratch_db).database)
                         .render_as_string(hide_password=False))
    before = pgbouncer.transactions()

    upgrade(through)
    downgrade(through, "0001")  # the logs' partitioning, undone and redone
    upgrade(through)

    engine = create_engine(scratch_db)
    try:
        with engine.connect() as conn:
            head = conn.scalar(text("SELECT version_num FROM alembic_version"))
            partitioned = conn.scalar(text("SELECT count(*) FROM pg_partitioned_table"))
        assert "api_usage_log" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    latest = ScriptDirectory.from_config(alembic_config(scratch_db)).get_current_head()
    assert (head, partitioned) == (latest, 2)
    assert pgbouncer.transactions() - before >= 3
