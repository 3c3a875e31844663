"""Chaos: the stack keeps its money right, and itself running, through restarts and kills.

Servers of the test's own (never the shared ones): an embedded PostgreSQL, a persistent
Redis on a port the test owns, a localstripe; the stack runs under ``billing dev``, its
supervisor. Under mixed load (clients spending with an Idempotency-Key and retrying on
5xx, PaymentIntents paid on localstripe so webhooks flow), Redis and PostgreSQL are
restarted and the worker and beat are SIGKILLed. Then: no 500; each balance is its grants
minus the spends answered 2xx; stored balances equal the ledger; every payment granted
exactly once; every event processed (those answered 503 while PostgreSQL was down fetched
by the reconciliation); every process running again, nobody having helped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import stripe
from sqlalchemy import text

from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from db.engine import get_sessionmaker
from tests.conftest import ARTIFACTS, TEST_JWT_SECRET, TEST_STRIPE_KEY, TEST_WEBHOOK_SECRET
from tests.factories import auth_headers, make_user
from tests.stripe_events import WEBHOOK_PATH, point_localstripe_webhooks
from tests.support import (
    ROOT,
    free_port,
    restart_redis,
    start_localstripe,
    wait_for,
)
from tests.test_cli import BILLING, clean_env
from workers import heartbeat

API = "/api/user-management"
SPENDERS, BUYERS = 6, 2
START_CREDITS = 1_000_000
PACKAGE_CREDITS = 100  # the seeded "starter" package
LOAD_S = 30
REQUEST_DEADLINE_S = 60


@dataclass
class Load:
    """What the clients did and were answered."""

    statuses: list[int] = field(default_factory=list)  # every answer, retries included
    spent: dict[uuid.UUID, int] = field(default_factory=dict)  # user -> credits answered 2xx
    paid: dict[uuid.UUID, list[str]] = field(default_factory=dict)  # user -> PaymentIntents
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


class Stack:
    """Servers of our own and ``billing dev`` supervising the API, a worker and beat."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.postgres = EmbeddedPostgres(tmp / "servers", database="billing")
        self.redis = EmbeddedRedis(tmp / "servers", persist=True, port=free_port())
        self.localstripe, self.stripe_url = start_localstripe(tmp)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        self.database_url = self.postgres.start()
        self.redis_url = self.redis.start()
        point_localstripe_webhooks(self.stripe_url, self.base + WEBHOOK_PATH)
        self.log = ARTIFACTS / "chaos-billing-dev.log"
        self.log.unlink(missing_ok=True)
        env = clean_env(
            BILLING_ENVIRONMENT="test", BILLING_LOG_JSON="false",
            BILLING_DATABASE_URL=self.database_url, BILLING_REDIS_URL=self.redis_url,
            BILLING_DATA_DIR=str(self.data_dir), BILLING_API_PORT=str(self.port),
            BILLING_JWT_SECRET=TEST_JWT_SECRET, BILLING_STRIPE_SECRET_KEY=TEST_STRIPE_KEY,
            BILLING_STRIPE_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
            BILLING_STRIPE_API_BASE=self.stripe_url,
            # Scheduled work often enough for a test of a minute or two.
            BILLING_EVENT_SWEEP_INTERVAL_S="2", BILLING_STRIPE_EVENT_SWEEP_DELAY_S="3",
            BILLING_STRIPE_RECONCILE_INTERVAL_S="10", BILLING_STRIPE_RECONCILE_WINDOW_S="600",
            BILLING_TASK_TIME_LIMIT_S="30", BILLING_TASK_RETRY_MAX_S="5",
            BILLING_BROKER_VISIBILITY_TIMEOUT_S="60", BILLING_HEARTBEAT_STALE_S="20",
        )
        self.dev = subprocess.Popen([*BILLING, "dev"], cwd=ROOT, env=env,
                                    stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
        wait_for(lambda: "billing dev: ready" in self.output(), timeout=90, interval=0.5,
                 message="billing dev to be ready")
        self.sessions = get_sessionmaker(self.database_url)

    def output(self) -> str:
        """What billing dev and its children printed, without the console's colours."""
        assert self.dev.poll() is None, f"billing dev exited:\n{self.log.read_text()}"
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))

    def child(self, role: str) -> psutil.Process:
        marker = {"api": "api.server", "worker": "worker", "beat": "beat"}[role]
        return next(p for p in psutil.Process(self.dev.pid).children()
                    if marker in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE)

    def restart_postgres(self) -> None:
        self.postgres.stop()  # fast mode, as `pg_ctlcluster ... restart -m fast`
        self.postgres.start()

    def close(self) -> None:
        if self.dev.poll() is None:
            self.dev.send_signal(signal.SIGTERM)
            try:
                self.dev.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.dev.pid, signal.SIGKILL)
        self.localstripe.terminate()
        self.localstripe.wait(10)
        self.redis.stop()
        self.postgres.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    built = Stack(tmp_path)
    yield built
    built.close()


def _retrying(load: Load, call: Callable[[], httpx.Response]) -> httpx.Response | None:
    """``call`` until it is answered below 500 (409 in progress: again), as careful clients do."""
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            response = call()
        except httpx.TransportError:
            time.sleep(0.3)
            continue
        with load.lock:
            load.statuses.append(response.status_code)
        in_progress = (response.status_code == 409
                       and response.json()["error"]["code"] == "idempotency_in_progress")
        if response.status_code < 500 and not in_progress:
            return response
        time.sleep(0.3)
    return None


def _spender(stack: Stack, load: Load, user, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=stack.base, timeout=10) as http:
        n = 0
        while not load.stop.is_set():
            n += 1
            credits = 1 + n % 5
            key = {"Idempotency-Key": uuid.uuid4().hex, **headers}
            answer = _retrying(load, lambda: http.post(
                f"{API}/credits/use", headers=key,
                json={"credits": credits, "description": "chaos", "endpoint": "/v1/chaos"}))
            assert answer is not None, "a spend was never answered"
            assert answer.status_code == 200, answer.text
            with load.lock:
                load.spent[user.id] = load.spent.get(user.id, 0) + credits


def _buyer(stack: Stack, load: Load, user, headers: dict[str, str]) -> None:
    sdk = stripe.StripeClient(TEST_STRIPE_KEY, base_addresses={"api": stack.stripe_url})
    with httpx.Client(base_url=stack.base, timeout=10) as http:
        while not load.stop.is_set():
            key = {"Idempotency-Key": uuid.uuid4().hex, **headers}
            started = _retrying(load, lambda: http.post(
                f"{API}/credits/purchase", headers=key,
                json={"package_id": "starter", "flow": "payment_intent"}))
            assert started is not None and started.status_code == 201, started
            intent = started.json()["client_secret"].split("_secret_")[0]
            sdk.v1.payment_intents.update(intent, params={"payment_method": "pm_card_visa"})
            assert sdk.v1.payment_intents.confirm(intent).status == "succeeded"
            with load.lock:
                load.paid.setdefault(user.id, []).append(intent)
            time.sleep(0.5)


def _scalar(stack: Stack, sql: str, **params):
    with stack.sessions() as session:
        return session.execute(text(sql), params).scalar()


def test_money_and_processes_survive_redis_and_postgres_restarts_and_killed_workers(stack):
    with stack.sessions() as session:
        spenders = [make_user(session, credits=START_CREDITS) for _ in range(SPENDERS)]
        buyers = [make_user(session) for _ in range(BUYERS)]
    load = Load()
    errors: list[BaseException] = []

    def client(role: Callable[..., None], user) -> threading.Thread:
        def run() -> None:
            try:
                role(stack, load, user, auth_headers(user))
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)
                load.stop.set()
        return threading.Thread(target=run)

    threads = [client(_spender, u) for u in spenders] + [client(_buyer, u) for u in buyers]
    for thread in threads:
        thread.start()

    worker, beat = stack.child("worker"), stack.child("beat")
    time.sleep(4)
    restart_redis(stack.redis)
    time.sleep(6)
    stack.restart_postgres()
    time.sleep(6)
    os.killpg(worker.pid, signal.SIGKILL)
    time.sleep(4)
    os.killpg(beat.pid, signal.SIGKILL)
    time.sleep(LOAD_S - 20)
    load.stop.set()
    for thread in threads:
        thread.join(REQUEST_DEADLINE_S + 10)
    assert not errors, errors

    intents = [i for paid in load.paid.values() for i in paid]
    assert len(intents) >= 4, "too few payments to mean anything"

    def settled() -> bool:
        pending = _scalar(stack, "SELECT count(*) FROM stripe_events "
                                 "WHERE status NOT IN ('processed', 'ignored')")
        granted = _scalar(stack, "SELECT count(*) FROM payments WHERE status = 'succeeded' "
                                 "AND stripe_payment_intent_id = ANY(:ids)", ids=intents)
        return pending == 0 and granted == len(intents)

    # The reconciliation runs every 10 s; a restarted beat counts its periods afresh.
    wait_for(settled, timeout=90, interval=1, message="every payment and event settled")

    assert 500 not in load.statuses
    assert load.statuses.count(200) + load.statuses.count(201) > 100
    for user in spenders:
        balance = _scalar(stack, "SELECT credit_balance FROM users WHERE id = :id", id=user.id)
        assert balance == START_CREDITS - load.spent.get(user.id, 0)
    for user in buyers:
        balance = _scalar(stack, "SELECT credit_balance FROM users WHERE id = :id", id=user.id)
        assert balance == PACKAGE_CREDITS * len(load.paid.get(user.id, []))
    assert _scalar(stack, """
        SELECT count(*) FROM users u WHERE u.credit_balance <> COALESCE(
            (SELECT sum(amount) FROM credit_transactions t WHERE t.user_id = u.id), 0)""") == 0
    assert _scalar(stack, """
        SELECT count(*) FROM payments p WHERE p.stripe_payment_intent_id = ANY(:ids) AND (
            SELECT count(*) FROM credit_transactions t
            WHERE t.kind = 'purchase' AND t.reference_id = p.id::text) <> 1""", ids=intents) == 0
    # Every PaymentIntent's event is in the inbox, those the webhook missed included.
    assert _scalar(stack, "SELECT count(DISTINCT payload->'data'->'object'->>'id') "
                          "FROM stripe_events WHERE type = 'payment_intent.succeeded' "
                          "AND status = 'processed'") == len(intents)

    # Every process runs again, and nobody helped.
    output = stack.output()
    assert " status=500" not in output  # nor to a webhook from Stripe
    assert "Connection to broker lost" in output and "Unrecoverable error" not in output
    assert "the worker process exited unexpectedly (killed by SIGKILL)" in output
    assert "the beat process exited unexpectedly (killed by SIGKILL)" in output
    assert stack.child("worker").pid != worker.pid and stack.child("beat").pid != beat.pid
    assert httpx.get(f"{stack.base}/readyz", timeout=10).status_code == 200
    for role in heartbeat.ROLES:
        age = heartbeat.age(stack.data_dir / "run" / f"{role}.heartbeat")
        assert age is not None and age < 20, f"{role} heartbeat {age}"
