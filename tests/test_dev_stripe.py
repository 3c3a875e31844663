"""Which Stripe `billing dev` uses (cli/dev_stripe.py); the run itself is in test_cli.py."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import AnyHttpUrl, SecretStr

from cli import dev_stripe
from settings import Settings

API = "http://127.0.0.1:8000"


def _settings(**values) -> Settings:
    return Settings.model_construct(**{**Settings().model_dump(), **values})


@pytest.fixture
def no_billing_env(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("BILLING_")]:
        monkeypatch.delenv(key)


@pytest.mark.usefixtures("no_billing_env")
def test_no_key_runs_a_local_peer_on_loopback_with_a_fresh_webhook_secret(tmp_path):
    first = dev_stripe.setup(_settings(), tmp_path, choice="auto", api_url=API)
    second = dev_stripe.setup(_settings(), tmp_path, choice="auto", api_url=API)

    url = first.env["BILLING_STRIPE_API_BASE"]
    assert url.startswith("http://127.0.0.1:")
    assert first.summary == f"{url} (local peer)"
    assert first.env["BILLING_STRIPE_LOCAL_PEER"] == "true"
    assert first.env["BILLING_STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
    assert first.env["BILLING_STRIPE_WEBHOOK_SECRET"] != second.env[
        "BILLING_STRIPE_WEBHOOK_SECRET"]
    argv = first.peer_argv
    assert argv is not None and argv[1:3] == ["-m", "cli.stripe_peer"]
    assert argv[argv.index("--webhook-url") + 1] == f"{API}/api/user-management/webhook/stripe"
    assert argv[argv.index("--state") + 1].startswith(str(tmp_path))
    # The secret travels in the environment, never on a command line (`ps` shows those).
    assert first.env["BILLING_STRIPE_WEBHOOK_SECRET"] not in " ".join(argv)


@pytest.mark.usefixtures("no_billing_env")
def test_a_real_key_uses_stripe_and_says_how_its_webhooks_reach_us(tmp_path):
    setup = dev_stripe.setup(_settings(stripe_secret_key=SecretStr("sk_test_51abc")), tmp_path,
                             choice="auto", api_url=API)
    assert setup.peer_argv is None and setup.env == {}
    assert setup.summary == (
        "api.stripe.com (test mode); webhooks: stripe listen --forward-to "
        f"{API}/api/user-management/webhook/stripe, then set BILLING_STRIPE_WEBHOOK_SECRET to "
        "the secret it prints")
    with_secret = dev_stripe.setup(
        _settings(stripe_secret_key=SecretStr("sk_test_51abc"),
                  stripe_webhook_secret=[SecretStr("whsec_1")]),
        tmp_path, choice="auto", api_url=API)
    assert with_secret.summary.endswith("/api/user-management/webhook/stripe")


@pytest.mark.usefixtures("no_billing_env")
def test_off_or_an_api_base_takes_the_settings_as_they_are(tmp_path):
    off = dev_stripe.setup(_settings(), tmp_path, choice="off", api_url=API)
    assert (off.peer_argv, off.env) == (None, {})
    assert off.summary.startswith("off (--stripe=off")
    based = dev_stripe.setup(_settings(stripe_api_base=AnyHttpUrl("http://127.0.0.1:8420")),
                             tmp_path, choice="auto", api_url=API)
    assert (based.peer_argv, based.env) == (None, {})
    assert "BILLING_STRIPE_API_BASE" in based.summary


@pytest.mark.usefixtures("no_billing_env")
def test_no_key_without_localstripe_installed_says_what_to_do(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "localstripe" else real_find_spec(name, *a))
    with pytest.raises(dev_stripe.StripePeerMissing, match=r"\.\[localstripe\]"):
        dev_stripe.setup(_settings(), tmp_path, choice="auto", api_url=API)
