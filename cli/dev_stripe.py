"""Which Stripe ``billing dev`` talks to: a local peer of its own when there is no key.

- No ``BILLING_STRIPE_SECRET_KEY`` (and no ``BILLING_STRIPE_API_BASE``): a local Stripe peer
  (localstripe, ``cli/stripe_peer.py``) runs as one more supervised child on a free loopback
  port; the API and the worker are pointed at it, with a webhook secret generated for the
  run, and the peer sends its signed events to our webhook. The portal pays there with test
  cards (``BILLING_STRIPE_LOCAL_PEER``), since the peer has no hosted Checkout.
- A real key: Stripe itself; its webhooks reach a local machine through
  ``stripe listen --forward-to``, which the banner spells out.
- ``BILLING_STRIPE_API_BASE`` set, or ``--stripe=off``: the settings are used as they are.
"""

from __future__ import annotations

import importlib.util
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cli._process import free_tcp_port
from cli.commands import python_module
from settings import Settings

CHOICES = ("auto", "off")
WEBHOOK_PATH = "/api/user-management/webhook/stripe"


class StripePeerMissing(Exception):
    """The local Stripe peer is wanted but localstripe is not installed."""


@dataclass(frozen=True)
class StripeSetup:
    """What the banner says of Stripe, the children's settings, and the peer's command."""

    summary: str
    env: dict[str, str] = field(default_factory=dict)
    peer_argv: list[str] | None = None


def setup(settings: Settings, data_dir: Path, *, choice: str, api_url: str) -> StripeSetup:
    """The Stripe this run uses (``choice``: ``auto`` or ``off``); ``api_url`` is our API's."""
    webhook = api_url + WEBHOOK_PATH
    if choice == "off":
        if settings.stripe_key_configured:
            return StripeSetup("as configured (--stripe=off)")
        return StripeSetup("off (--stripe=off; no key: purchases answer 503)")
    if settings.stripe_api_base is not None:
        return StripeSetup(f"{settings.stripe_api_base} (BILLING_STRIPE_API_BASE)")
    if settings.stripe_key_configured:
        key = settings.stripe_secret_key.get_secret_value()
        mode = "test mode" if "_test_" in key else "LIVE mode"
        summary = f"api.stripe.com ({mode}); webhooks: stripe listen --forward-to {webhook}"
        if not settings.stripe_webhook_secret:
            summary += ", then set BILLING_STRIPE_WEBHOOK_SECRET to the secret it prints"
        return StripeSetup(summary)
    if importlib.util.find_spec("localstripe") is None:
        raise StripePeerMissing(
            "there is no Stripe key, and the local Stripe peer is not installed: "
            "pip install -e '.[localstripe]' (or set BILLING_STRIPE_SECRET_KEY, "
            "or run billing dev --stripe=off)"
        )
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    argv = python_module(
        "cli.stripe_peer", "--port", str(port),
        "--state", str(data_dir / "stripe" / "localstripe.pickle"),
        "--webhook-url", webhook,
    )  # fmt: skip
    env = {
        "BILLING_STRIPE_API_BASE": url,
        # A fresh secret each run: the peer signs with it, the API checks it.
        "BILLING_STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_urlsafe(32),
        "BILLING_STRIPE_LOCAL_PEER": "true",
    }
    return StripeSetup(f"{url} (local peer)", env, argv)
