"""Settings fail fast, naming the setting; placeholders are refused outside development."""

from __future__ import annotations

import pytest

from settings import Settings, SettingsError, load_settings


@pytest.fixture
def env(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_development_defaults_need_nothing(env, tmp_path):
    env.setenv("BILLING_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.embedded
    assert settings.access_token_ttl_s == 3600
    secret = settings.jwt_signing_key()
    assert len(secret) >= 32
    assert load_settings().jwt_signing_key() == secret  # kept in the data dir


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BILLING_API_PORT", "abc"),
        ("BILLING_DATABASE_URL", "mysql://x"),
        ("BILLING_REDIS_URL", "http://x"),
        ("BILLING_ACCESS_TOKEN_TTL_S", "-5"),
        ("BILLING_ENVIRONMENT", "staging"),
        ("BILLING_DATABASE_POOLER", "pgbouncer"),
    ],
)
def test_invalid_value_names_the_setting(env, name, value):
    env.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_a_transaction_pooler_changes_the_connections_and_nothing_else(env):
    from db.engine import connect_args, libpq_url

    env.setenv("BILLING_DATABASE_URL", "postgresql://app:pw@pgbouncer:6432/billing")
    direct = load_settings().database_url
    env.setenv("BILLING_DATABASE_POOLER", "transaction")
    pooled = load_settings().database_url

    assert libpq_url(pooled) == libpq_url(direct) == "postgresql://app:pw@pgbouncer:6432/billing"
    assert connect_args(direct)["options"] == "-c idle_in_transaction_session_timeout=60000"
    assert "prepare_threshold" not in connect_args(direct)  # psycopg's default: prepared
    assert connect_args(pooled)["prepare_threshold"] is None
    assert "options" not in connect_args(pooled)  # a startup option PgBouncer refuses


def test_a_bad_url_behind_a_pooler_is_named_without_its_password(env):
    env.setenv("BILLING_DATABASE_POOLER", "transaction")
    env.setenv("BILLING_DATABASE_URL", "postgresql://app:hunter2-secret@pgbouncer:port/billing")
    with pytest.raises(SettingsError, match="BILLING_DATABASE_URL") as err:
        load_settings()
    assert "hunter2" not in str(err.value)


def test_unknown_setting_is_refused(env):
    env.setenv("BILLING_DATABSE_URL", "postgresql://x/y")
    with pytest.raises(SettingsError, match="BILLING_DATABSE_URL"):
        load_settings()


def test_placeholder_secrets_refused_in_production(env):
    env.setenv("BILLING_ENVIRONMENT", "production")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "BILLING_JWT_SECRET" in message and "BILLING_STRIPE_SECRET_KEY" in message


def test_production_accepts_real_secrets(env):
    env.setenv("BILLING_ENVIRONMENT", "production")
    env.setenv("BILLING_JWT_SECRET", "p" * 40)
    env.setenv("BILLING_STRIPE_SECRET_KEY", "sk_live_abcdef")
    env.setenv("BILLING_STRIPE_WEBHOOK_SECRET", "whsec_a,whsec_b")
    settings = load_settings()
    assert [s.get_secret_value() for s in settings.stripe_webhook_secret] == ["whsec_a", "whsec_b"]
    assert "sk_live_abcdef" not in repr(settings)


def test_visibility_timeout_must_exceed_task_time_limit(env):
    env.setenv("BILLING_TASK_TIME_LIMIT_S", "100")
    env.setenv("BILLING_BROKER_VISIBILITY_TIMEOUT_S", "50")
    with pytest.raises(SettingsError, match="VISIBILITY_TIMEOUT"):
        load_settings()


def test_visibility_timeout_must_exceed_the_longest_retry_countdown(env):
    env.setenv("BILLING_TASK_TIME_LIMIT_S", "100")
    env.setenv("BILLING_BROKER_VISIBILITY_TIMEOUT_S", "200")
    # Stripe events back off up to 300 s by default: a retry held 300 s must not come back.
    with pytest.raises(SettingsError, match="VISIBILITY_TIMEOUT_S must exceed BILLING_TASK_RETRY"):
        load_settings()
    env.setenv("BILLING_TASK_RETRY_MAX_S", "150")
    assert load_settings().broker_visibility_timeout_s == 200


def test_every_task_retry_counts_down_at_most_the_cap(settings):
    from celery.exceptions import Retry

    from workers.app import BillingTask, app

    app.loader.import_default_modules()  # the task modules, as a worker imports them
    assert all(isinstance(task, BillingTask) for name, task in app.tasks.items()
               if not name.startswith("celery."))
    assert settings.task_retry_max_s == 5  # the test settings
    task = app.tasks["stripe.sweep"]
    task.push_request(retries=0, called_directly=False)
    try:
        with pytest.raises(Retry) as retry:
            task.retry(countdown=600, throw=True)
    finally:
        task.pop_request()
    assert retry.value.when == 5


def test_postgres_urls_use_psycopg():
    assert Settings(database_url="postgresql://u@h/d").database_url == "postgresql+psycopg://u@h/d"


def test_debug_logging_keeps_http_clients_at_info():
    """Their DEBUG lines carry whole bodies (a PaymentIntent's client secret) and headers."""
    import logging

    from logconfig import QUIET_BELOW_INFO, configure_logging

    root = logging.getLogger()
    saved = root.level, root.handlers[:], {n: logging.getLogger(n).level for n in QUIET_BELOW_INFO}
    try:
        configure_logging(level="DEBUG", json=True)
        assert logging.getLogger("billing").isEnabledFor(logging.DEBUG)
        for name in ("stripe", "httpx"):
            assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
            assert logging.getLogger(name).isEnabledFor(logging.INFO), name
        configure_logging(level="WARNING", json=True)
        assert not logging.getLogger("stripe").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
