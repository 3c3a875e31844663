"""The test harness: real PostgreSQL, Redis, Celery worker and localstripe.

Servers come from ``BILLING_TEST_DATABASE_URL`` / ``BILLING_TEST_REDIS_URL``
when set (CI points them at the machine's servers), else the embedded ones are
started under a temporary directory. The test database is created fresh and
built by running the Alembic migrations. The environment is set in
``pytest_configure`` so every process the tests start (worker, API) sees it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import stripe
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.smtp import start_smtp_server
from tests.stripe_stub import StripeStub
from tests.support import (
    ARTIFACTS,
    WorkerProcess,
    own_database,
    own_redis_db,
    scratch_session,
    served,
    start_localstripe,
    xdist_controller,
)

TEST_JWT_SECRET = "test-jwt-secret-" + "x" * 32
TEST_STRIPE_KEY = "sk_test_localstripe_key_for_tests"
TEST_WEBHOOK_SECRET = "whsec_test_secret_for_tests"
pytest_plugins = ["tests.conftest_auth", "tests.secrets_scan", "tests.browser"]


class _Servers:
    """What ``pytest_configure`` started; stopped in ``pytest_unconfigure``."""

    tmp: Path
    embedded: list[Any]
    localstripe: subprocess.Popen[bytes] | None = None
    localstripe_url: str = ""
    # SDK -> stub (endpoints localstripe lacks) -> localstripe; see tests/stripe_stub.py.
    stripe_stub: StripeStub | None = None
    database_url: str = ""
    redis_url: str = ""
    smtp: Any = None  # aiosmtpd controller: the worker delivers mail to it over TCP


SERVERS = _Servers()


def _database_url() -> str:
    url = os.environ.get("BILLING_TEST_DATABASE_URL")
    if url:
        return own_database(url)
    from cli.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(SERVERS.tmp / "embedded", database="billing_test")
    SERVERS.embedded.append(pg)
    return pg.start()


def _redis_url() -> str:
    url = os.environ.get("BILLING_TEST_REDIS_URL")
    if url:
        return own_redis_db(url)
    from cli.embedded import EmbeddedRedis

    server = EmbeddedRedis(SERVERS.tmp / "embedded", persist=False)
    SERVERS.embedded.append(server)
    return server.start()


def _recreate_database(url: str) -> str:
    """Drop and create the test database named in ``url``; return its psycopg URL."""
    sa_url = make_url(url).set(drivername="postgresql+psycopg")
    name = sa_url.database
    assert name, "BILLING_TEST_DATABASE_URL must name a database"
    admin = sa_url.set(drivername="postgresql", database="postgres")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return sa_url.render_as_string(hide_password=False)


def _start_localstripe() -> str:
    SERVERS.localstripe, url = start_localstripe(SERVERS.tmp)
    return url


def pytest_configure(config: pytest.Config) -> None:
    if xdist_controller(config):
        return  # each xdist worker starts its own servers
    SERVERS.tmp = Path(tempfile.mkdtemp(prefix="billing-tests-"))
    SERVERS.embedded = []
    SERVERS.database_url = _recreate_database(_database_url())
    SERVERS.redis_url = _redis_url()
    redis.Redis.from_url(SERVERS.redis_url).flushdb()
    SERVERS.localstripe_url = _start_localstripe()
    SERVERS.stripe_stub = StripeStub(SERVERS.localstripe_url).start()
    SERVERS.smtp = start_smtp_server(SERVERS.tmp / "mail")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for key in [k for k in os.environ if k.startswith("BILLING_") and
                not k.startswith(("BILLING_TEST_", "BILLING_BENCH_"))]:
        del os.environ[key]
    os.environ.update(
        {
            "BILLING_ENVIRONMENT": "test",
            "BILLING_DATABASE_URL": SERVERS.database_url,
            "BILLING_REDIS_URL": SERVERS.redis_url,
            "BILLING_DATA_DIR": str(SERVERS.tmp / "data"),
            "BILLING_JWT_SECRET": TEST_JWT_SECRET,
            "BILLING_STRIPE_SECRET_KEY": TEST_STRIPE_KEY,
            "BILLING_STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
            "BILLING_STRIPE_API_BASE": SERVERS.stripe_stub.url,
            # Short enough that a task of a killed worker comes back within a test. The
            # settings check holds as in production: the visibility timeout exceeds the
            # time limit and every retry countdown (capped at 5 s here, 300 s by default).
            "BILLING_TASK_TIME_LIMIT_S": "8",
            "BILLING_TASK_RETRY_MAX_S": "5",
            "BILLING_BROKER_VISIBILITY_TIMEOUT_S": "10",
            "BILLING_LOG_LEVEL": "INFO",
            "BILLING_MAIL_BACKEND": "smtp",
            "BILLING_SMTP_HOST": "127.0.0.1",
            "BILLING_SMTP_PORT": str(SERVERS.smtp.port),
            "BILLING_SMS_BACKEND": "file",
            "BILLING_SMS_FILE_DIR": str(SERVERS.tmp / "sms"),
        }
    )
    from db.migrate import upgrade

    upgrade(SERVERS.database_url)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SERVERS.smtp is not None:
        SERVERS.smtp.stop()
    if SERVERS.stripe_stub is not None:
        SERVERS.stripe_stub.stop()
    if SERVERS.localstripe is not None and SERVERS.localstripe.poll() is None:
        SERVERS.localstripe.terminate()
        SERVERS.localstripe.wait(10)
    for server in reversed(getattr(SERVERS, "embedded", [])):
        server.stop()
    if hasattr(SERVERS, "tmp"):
        shutil.rmtree(SERVERS.tmp, ignore_errors=True)


# --- database -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def settings():
    from settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def engine(settings):
    from db.engine import get_engine

    return get_engine(settings.database_url)


@pytest.fixture(scope="session")
def _seed_rows(engine) -> dict[str, list[dict[str, Any]]]:
    """Rows the migrations seeded, restored after each test's truncation."""
    with engine.connect() as conn:
        tables = _data_tables(conn)
        return {
            table: [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
            for table in tables
            if conn.execute(text(f'SELECT EXISTS (SELECT 1 FROM "{table}")')).scalar()
        }


def _data_tables(conn) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version' ORDER BY tablename"
        )
    )
    return [r[0] for r in rows]


@pytest.fixture(autouse=True)
def clean_state(engine, _seed_rows, settings) -> Iterator[None]:
    """Each test starts from the migrated schema with only its seed rows, and an empty queue."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                # DELETE with triggers off (the ledger's append-only trigger, foreign keys)
                # costs ~1 ms where TRUNCATE of every table cost ~85 ms a test: TRUNCATE
                # makes new files for each table. Sequences restart as TRUNCATE's RESTART
                # IDENTITY did.
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                for table in _data_tables(conn):
                    conn.execute(text(f'DELETE FROM "{table}"'))
                conn.execute(text(
                    "SELECT setval(format('%I.%I', schemaname, sequencename), start_value, false) "
                    "FROM pg_sequences WHERE schemaname = 'public'"
                ))
                for table, rows in _seed_rows.items():
                    cols = list(rows[0])
                    conn.execute(
                        text(f'INSERT INTO "{table}" ({", ".join(cols)}) '
                             f'VALUES ({", ".join(":" + c for c in cols)})'),
                        rows,
                    )
            break
        except OperationalError as exc:
            # The session worker may still be writing the previous test's log batch; its
            # inserts and these deletes can deadlock. PostgreSQL aborts one side: go again.
            if attempt == 4 or not isinstance(exc.orig, psycopg.errors.DeadlockDetected):
                raise
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(match="billing:*"):
        client.delete(key)
    client.delete("billing", "unacked", "unacked_index")
    yield


@pytest.fixture
def scratch_db(settings) -> Iterator[str]:
    """The URL of an empty database of the test's own (for migrations and DDL), dropped after."""
    url = make_url(settings.database_url)
    name = f"{url.database}_scratch"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(settings) -> Iterator[Session]:
    """A session for arranging and checking data; commit to make rows visible to others."""
    with scratch_session(settings.database_url) as session:
        yield session


# --- API --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def app(settings):
    from api.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    """An HTTP client for the app, its lifespan running (so enqueue-after-commit sends)."""
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_api(app) -> Iterator[str]:
    """The app served by a real uvicorn on a loopback port, for peers that call us (webhooks)."""
    with served(app) as base:
        yield base


# --- workers and Stripe -------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[WorkerProcess]:
    """A real Celery worker process consuming the test broker for the whole session."""
    worker = WorkerProcess(log_path=ARTIFACTS / "worker.log").start()
    yield worker
    worker.stop()


@pytest.fixture
def own_worker() -> Iterator[WorkerProcess]:
    """A worker of the test's own, for tests that kill it; the shared one is not touched."""
    worker = WorkerProcess(log_path=ARTIFACTS / "worker-own.log")
    yield worker
    worker.kill()


@pytest.fixture
def only_own_worker() -> Iterator[None]:
    """Pause the session's shared worker (if any) so that only the test's own worker consumes."""
    from workers.app import app

    app.control.cancel_consumer("billing", reply=True, timeout=2)
    try:
        yield
    finally:
        app.control.add_consumer("billing", reply=True, timeout=2)


@pytest.fixture(scope="session")
def localstripe_url() -> str:
    return SERVERS.localstripe_url


@pytest.fixture
def stripe_client(localstripe_url) -> stripe.StripeClient:
    """The official SDK pointed at localstripe."""
    return stripe.StripeClient(TEST_STRIPE_KEY, base_addresses={"api": localstripe_url})


@pytest.fixture(scope="session")
def stripe_stub() -> StripeStub:
    """The stub in front of localstripe (Checkout Sessions live here)."""
    assert SERVERS.stripe_stub is not None
    return SERVERS.stripe_stub
